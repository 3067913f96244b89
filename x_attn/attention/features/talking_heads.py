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
