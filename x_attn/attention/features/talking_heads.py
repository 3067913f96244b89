"""Talking-heads attention (Shazeer et al., arXiv 2003.02436).

Learned (heads x heads) mixing of the attention logits across heads before the softmax
("pre") and/or of the attention weights after it ("post").

Shape legend: b batch, h / g heads, i queries, j keys.
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import einsum
from torch import Tensor, nn

from x_attn.attention.features import ScoreFeature
from x_attn.attention.features.spec import FeatureContext, FeatureSpec


class TalkingHeads(ScoreFeature):
    """out[:, h] = sum_g W[h, g] * scores[:, g]; W is initialised to the identity."""

    def __init__(self, heads: int, stage: Literal["pre", "post"], flag: str) -> None:
        super().__init__()
        self.stage, self.flag = stage, flag
        self.weight = nn.Parameter(torch.eye(heads))

    def _mix(self, scores: Tensor) -> Tensor:
        return einsum(self.weight.to(scores.dtype), scores, "h g, b g i j -> b h i j")

    def on_logits(self, sim: Tensor, prev_logits: Tensor | None) -> Tensor:
        return self._mix(sim) if self.stage == "pre" else sim

    def on_probs(self, attn: Tensor) -> Tensor:
        return self._mix(attn) if self.stage == "post" else attn


def _flag(ctx: FeatureContext, stage: str) -> str:
    return ctx.flag("talking_heads" if ctx.config.talking_heads else f"{stage}_talking_heads")


def _spec(stage: Literal["pre", "post"]) -> FeatureSpec:
    return FeatureSpec(
        f"{stage}_talking_heads",
        "2003.02436",
        "logits" if stage == "pre" else "probs",
        enabled=lambda ctx: getattr(ctx.config, f"uses_{stage}_talking_heads"),
        build=lambda ctx: TalkingHeads(ctx.heads, stage, flag=_flag(ctx, stage)),
        needs_scores=True,
        flag_of=lambda ctx: _flag(ctx, stage),
    )


PRE_TALKING_SPEC, POST_TALKING_SPEC = _spec("pre"), _spec("post")
