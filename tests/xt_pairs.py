"""x-transformers and x_attn models with the same weights, for equality tests.

``xt_pair(build)`` builds ``build(x_transformers)`` (float64, weights jittered so that zero- or
identity-initialised parts are active, eval mode) and loads its state_dict into
``build(x_attn)`` with :func:`x_attn.interop.from_x_transformers`; ``token_pair`` does the same
for a wrapper class named by string, in the default dtype. The weights always travel through
``from_x_transformers`` (the layout differences are listed there and in docs/compat.md).
Skips the test when x-transformers is not installed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch


def _jitter_(module: torch.nn.Module, scale: float) -> None:
    """Move every parameter by ``scale`` * N(0, 1) from the global generator, in place."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def jittered_x_transformers(build: Callable[[Any], torch.nn.Module]) -> torch.nn.Module:
    """``build(x_transformers)`` in float64 and eval mode, every weight jittered."""
    xt = pytest.importorskip("x_transformers")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = build(xt).double()
    _jitter_(theirs, 0.2)
    return theirs.eval()


def xt_pair(build: Callable[[Any], torch.nn.Module]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(theirs, ours), both float64 in eval mode, with the same weights."""
    import x_attn
    from x_attn.interop import from_x_transformers

    theirs = jittered_x_transformers(build)
    ours = from_x_transformers(theirs.state_dict(), build(x_attn).double())
    return theirs, ours.eval()


def copied_decoder_logits(
    flags: dict[str, Any],
    theirs_only: dict[str, Any] | None = None,
    adjust: Callable[[torch.nn.Module], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ours, theirs) logits on 2 x 8 seeded tokens of TransformerWrapper(Decoder(**flags))
    (vocabulary flag_models.VOCAB, 16 positions), x-transformers' built (after
    ``torch.manual_seed(0)``, with ``theirs_only`` flags too, e.g. its fused path) and
    :func:`flag_models.jittered` with seed 5 (zero-initialised parts active), then
    ``adjust(theirs)`` (no grad); ours, float64, loads its weights."""
    xt = pytest.importorskip("x_transformers")
    from flag_models import VOCAB, jittered, tokens

    import x_attn
    from x_attn.interop import from_x_transformers

    torch.manual_seed(0)
    layers = xt.Decoder(**flags, **(theirs_only or {}))
    theirs = jittered(
        xt.TransformerWrapper(num_tokens=VOCAB, max_seq_len=16, attn_layers=layers), seed=5
    )
    if adjust is not None:
        with torch.no_grad():
            adjust(theirs)
    ours = x_attn.TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=16, attn_layers=x_attn.Decoder(**flags)
    )
    ours = from_x_transformers(theirs, ours.double()).eval()
    ids = tokens(2, 8)
    with torch.no_grad():
        return ours(ids), theirs(ids)


def padded_cross_call(theirs: torch.nn.Module, ours: torch.nn.Module, dim: int, dim_context: int):
    """Both CrossAttenders on the same inputs with padded queries and context:
    (ours, theirs, query mask): outputs (b, n, d), mask (b, n)."""
    x, ctx = torch.randn(2, 6, dim).double(), torch.randn(2, 9, dim_context).double()
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 4:] = False
    context_mask = torch.ones(2, 9, dtype=torch.bool)
    context_mask[1, 7:] = False
    with torch.no_grad():
        expected = theirs(x, context=ctx, mask=mask, context_mask=context_mask)
        got = ours(x, context=ctx, mask=mask, context_mask=context_mask)
    return got, expected, mask


def decoder_logits_pair(**flags: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(ours, theirs) logits of a small Decoder LM with ``flags`` on the same weights/tokens."""

    def build(lib: Any) -> torch.nn.Module:
        layers = lib.Decoder(dim=16, depth=2, heads=2, attn_dim_head=8, **flags)
        return lib.TransformerWrapper(num_tokens=20, max_seq_len=12, attn_layers=layers)

    theirs, ours = xt_pair(build)
    toks = torch.randint(0, 20, (2, 9))
    with torch.no_grad():
        return ours(toks), theirs(toks)


def token_pair(
    stack: str, jitter: float = 0.1, cls: str = "TransformerWrapper", **wrapper: Any
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(x_attn, x-transformers) wrappers with the same weights, both in eval mode.

    ``stack`` is "Encoder" or "Decoder"; ``cls`` the wrapper class name; ``wrapper`` holds
    ``layers`` (the stack's flags) and the wrapper's arguments. x-transformers' weights are
    jittered by ``jitter`` so that zero-initialised parts are active.
    """
    xt = pytest.importorskip("x_transformers")
    import x_attn
    from x_attn.interop import from_x_transformers

    layers = wrapper.pop("layers")
    torch.manual_seed(0)
    theirs = getattr(xt, cls)(attn_layers=getattr(xt, stack)(**layers), **wrapper)
    _jitter_(theirs, jitter)
    ours = getattr(x_attn, cls)(attn_layers=getattr(x_attn, stack)(**layers), **wrapper)
    from_x_transformers(theirs, ours)
    return ours.eval(), theirs.eval()
