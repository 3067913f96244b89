"""Residual attention: RealFormer (He et al., arXiv 2012.11747).

Each layer adds the previous layer's pre-softmax attention logits to its own before masking
and softmax, and hands the sum on to the next layer.
"""

from __future__ import annotations

from torch import Tensor

from x_attn.attention.features import ScoreFeature
from x_attn.attention.features.spec import FeatureContext, FeatureSpec


class ResidualAttention(ScoreFeature):
    """logits_l = q k^T * scale + bias + logits_{l-1} (the first layer adds nothing).

    Args:
        flag: the flag that turned it on (``residual_attn``, or ``cross_residual_attn`` for
            cross-attention layers), named in error messages.
    """

    def __init__(self, flag: str = "residual_attn") -> None:
        super().__init__()
        self.flag = flag

    def on_logits(self, sim: Tensor, prev_logits: Tensor | None) -> Tensor:
        if prev_logits is None:
            return sim
        if prev_logits.shape[-2:] != sim.shape[-2:]:
            raise ValueError(
                f"{self.flag}: previous layer logits {tuple(prev_logits.shape)} do not match "
                f"this layer's {tuple(sim.shape)}; every layer of the stack must see the same keys"
            )
        return sim + prev_logits


def _flag(ctx: FeatureContext) -> str:
    return "cross_residual_attn" if ctx.prefix == "cross_attn_" else "residual_attn"


RESIDUAL_ATTN_SPEC = FeatureSpec(
    "residual_attn",
    "2012.11747",
    "logits",
    enabled=lambda ctx: ctx.residual_attn,
    build=lambda ctx: ResidualAttention(_flag(ctx)),
    needs_scores=True,
    flag_of=_flag,
)
