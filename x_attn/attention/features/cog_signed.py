"""Cog attention: "More Expressive Attention with Negative Weights" (Lv et al., arXiv 2411.07176).

The softmax is replaced by the signed exponential normalisation: a key's weight is
``sign(s) * exp(|s|) / sum_j exp(|s_j|)`` over the allowed keys, so weights may be negative
(a head can subtract what it attends to) and their absolute values sum to 1. Masked keys keep
weight 0: the manual kernel hides them by setting their logit to ``-finfo.max`` before the
normaliser, so this normaliser reads that exact value as "hidden" (a finite logit never reaches
it) rather than taking its absolute value. A learned sink (``attn_head_learned_sink``) is a key
with a zero value, so its sign does not matter; its magnitude competes like any other logit.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureSpec


class SignedExp(nn.Module):
    """Normaliser: (b, h, i, j) logits -> sign(s) * softmax(|s|) over the allowed keys."""

    def __init__(self, flag: str = "attn_cog_signed") -> None:
        super().__init__()
        self.flag = flag

    def forward(self, sim: Tensor) -> Tensor:
        hidden_value = -torch.finfo(sim.dtype).max
        hidden = sim <= hidden_value
        magnitude = sim.abs().masked_fill(hidden, hidden_value)
        return magnitude.softmax(dim=-1) * sim.sign()


COG_SIGNED_SPEC = FeatureSpec(
    "cog_signed",
    "2411.07176",
    "normalize",
    enabled=lambda ctx: ctx.config.cog_signed,
    build=lambda ctx: SignedExp(flag=ctx.flag("cog_signed")),
    needs_scores=True,
    slot="normalizer",
)
