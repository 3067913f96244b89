"""Load an x-transformers model's weights into the equivalent x_attn model (tests only).

Covers the flags both libraries share that the wrapper tests compare: pre-norm LayerNorm
stacks (encoder / decoder, cross-attention), GELU feed-forwards, learned absolute positions,
memory tokens, and the wrapper options of :mod:`x_attn.wrappers.token_io` / ``pooling`` /
``embedding``. Known layout differences: x-transformers' stack norms store ``gain - 1``
(``norm_add_unit_offset``), its learned positions are multiplied by ``dim ** -0.5`` unless
``l2norm_embed``, its token embedding sits at ``token_emb.emb`` and its heads have no bias.

Shape legend: d model dim, e embedding dim.
"""

from __future__ import annotations

import re

import torch
from torch import nn

RENAMES = [
    (r"^token_emb\.emb\.", "token_emb."),
    (r"^attn_layers\.layers\.(\d+)\.0\.0\.gamma$", r"attn_layers.layers.\1.norm.weight"),
    (r"^attn_layers\.final_norm\.gamma$", "attn_layers.final_norm.weight"),
    (r"^attn_layers\.layers\.(\d+)\.1\.(to_[qkv])\.", r"attn_layers.layers.\1.block.proj.\2."),
    (r"^attn_layers\.layers\.(\d+)\.1\.to_out\.", r"attn_layers.layers.\1.block.to_out."),
    (r"^attn_layers\.layers\.(\d+)\.1\.ff\.0\.0\.", r"attn_layers.layers.\1.block.proj_in."),
    (r"^attn_layers\.layers\.(\d+)\.1\.ff\.2\.", r"attn_layers.layers.\1.block.proj_out."),
    (r"^post_emb_norm\.gamma$", "post_emb_norm.weight"),
    (r"^attn_pool\.pooler\.(to_[qkv])\.", r"attn_pool.pooler.proj.\1."),
    (r"^attn_pool\.pooler\.to_out\.", "attn_pool.pooler.to_out."),
]


def _rename(key: str) -> str:
    for pattern, target in RENAMES:
        key = re.sub(pattern, target, key)
    return key


def _bias_only_here(name: str) -> bool:
    """Biases x_attn has and x-transformers does not (its norms and heads are bias-free)."""
    heads = ("norm", "to_logits", "project_in", "project_out")
    return name.endswith(".bias") and name.rsplit(".", 2)[-2].endswith(heads)


def half_split_order(heads: int, dim_head: int, rotary: int) -> torch.Tensor:
    """Rows of x-transformers' q/k weights in x_attn's rotary layout.

    x-transformers rotates interleaved pairs (2i, 2i + 1), x_attn half-split pairs
    (i, i + r/2), both at frequency i; permuting the q and k rows of every head alike leaves
    every score unchanged.
    """
    half = rotary // 2
    within = [2 * j if j < half else 2 * (j - half) + 1 for j in range(rotary)]
    within += list(range(rotary, dim_head))
    return torch.tensor([h * dim_head + j for h in range(heads) for j in within])


def load_from_x_transformers(
    ours: nn.Module, theirs: nn.Module, order: torch.Tensor | None = None
) -> None:
    """Copy ``theirs`` (x-transformers TransformerWrapper) into ``ours`` (x_attn), exactly.

    ``order`` (:func:`half_split_order`) permutes the q / k rows of a rotary model.
    """
    target = ours.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in theirs.state_dict().items():
        if key.endswith("inv_freq"):
            continue  # rotary frequencies: a buffer both compute the same way
        name = _rename(key)
        if name not in target:
            raise KeyError(f"no x_attn parameter for x-transformers' {key} (tried {name})")
        if re.match(r"attn_layers\.(layers\.\d+\.norm|final_norm)\.weight", name):
            value = value + 1.0  # unit offset
        if name == "pos_emb.emb.weight" and not getattr(theirs, "l2norm_embed", False):
            value = value * theirs.pos_emb.scale
        if order is not None and re.search(r"proj\.to_[qk]\.weight$", name):
            value = value[order]
        mapped[name] = value
    for name, value in target.items():
        if name not in mapped:
            if not _bias_only_here(name):
                raise KeyError(f"x-transformers has no weight for x_attn's {name}")
            mapped[name] = torch.zeros_like(value)
    ours.load_state_dict(mapped)


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
