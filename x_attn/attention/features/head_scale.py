"""Head scale of NormFormer (Shleifer et al., arXiv 2110.09456).

Every head's attention output is multiplied by its own learned scalar (initialised at 1)
before the heads are merged and projected.

Shape legend: b batch, h heads, i queries, d head dim.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureSpec
from x_attn.attention.features.stages import OutputGate


class HeadScale(OutputGate):
    """out (b h i d) -> out * s_h, s (1, h, 1, 1) initialised at 1."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, heads, 1, 1))

    def forward(self, out: Tensor, x: Tensor) -> Tensor:
        return out * self.scale.to(out.dtype)


HEAD_SCALE_SPEC = FeatureSpec(
    "head_scale",
    "2110.09456",
    "heads",
    enabled=lambda ctx: ctx.config.head_scale,
    build=lambda ctx: HeadScale(ctx.heads),
)
