"""Per-head output gates from "Quantizable Transformers: Removing Outliers by Helping Attention
Heads Do Nothing" (Bondarenko et al., arXiv 2306.12929).

Each head's output is multiplied by ``sigmoid(w_h . x + b_h)``, a gate computed from the
query's input. The weights start at 0 and the biases at 10, so every gate starts open
(sigmoid(10) ~ 0.99995) and a head learns to close it to do nothing.

Shape legend: b batch, h heads, i queries, d head dim, dm model dim.
"""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureSpec
from x_attn.attention.features.stages import OutputGate


class ValueHeadGates(OutputGate):
    """out (b h i d) * sigmoid(x W^T + b) per head, from the query input x (b i dm)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.to_gates = nn.Linear(dim, heads)
        nn.init.zeros_(self.to_gates.weight)
        nn.init.constant_(self.to_gates.bias, 10.0)

    def forward(self, out: Tensor, x: Tensor) -> Tensor:
        gates = rearrange(self.to_gates(x).sigmoid(), "b i h -> b h i 1")
        return out * gates.to(out.dtype)


VALUE_HEAD_GATES_SPEC = FeatureSpec(
    "gate_value_heads",
    "2306.12929",
    "heads",
    enabled=lambda ctx: ctx.config.gate_value_heads,
    build=lambda ctx: ValueHeadGates(ctx.dim, ctx.heads),
)
