"""x-transformers / x_attn model pairs with the same weights (tests only).

The weights travel through :func:`x_attn.interop.from_x_transformers` (the layout differences
are listed there and in docs/compat.md).
"""

from __future__ import annotations

import torch
from torch import nn

from x_attn.interop import from_x_transformers


def load_from_x_transformers(ours: nn.Module, theirs: nn.Module) -> None:
    """Copy ``theirs`` (an x-transformers model) into ``ours`` (x_attn), exactly.

    Delegates to :func:`x_attn.interop.from_x_transformers` (which also permutes the q / k
    rows of a rotary model).
    """
    from_x_transformers(theirs, ours)


def token_pair(
    stack: str, jitter: float = 0.1, cls: str = "TransformerWrapper", **wrapper
) -> tuple[nn.Module, nn.Module]:
    """(x_attn, x-transformers) wrappers with the same weights, both in eval mode.

    ``stack`` is "Encoder" or "Decoder"; ``cls`` the wrapper class name; ``wrapper`` holds
    ``layers`` (the stack's flags) and the wrapper's arguments. x-transformers' weights are
    jittered by ``jitter`` so that zero-initialised parts are active.
    """
    import x_transformers as xt

    import x_attn

    layers = wrapper.pop("layers")
    torch.manual_seed(0)
    theirs = getattr(xt, cls)(attn_layers=getattr(xt, stack)(**layers), **wrapper)
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(jitter * torch.randn_like(p))
    ours = getattr(x_attn, cls)(attn_layers=getattr(x_attn, stack)(**layers), **wrapper)
    load_from_x_transformers(ours, theirs)
    return ours.eval(), theirs.eval()
