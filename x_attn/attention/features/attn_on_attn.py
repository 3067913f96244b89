"""Attention on Attention (Huang et al., arXiv 1908.06954).

The attended vector v_hat and the query input q produce an information vector and a sigmoid
gate, both linear in [v_hat; q]:  i = W_i [v_hat; q] + b_i,  g = sigmoid(W_g [v_hat; q] + b_g),
output = g * i. This replaces the usual output projection.

Shape legend: b batch, n sequence, d model dim, e = heads * dim_head.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureSpec


class LinearOutput(nn.Linear):
    """The usual output stage: merged heads -> model dim (the query input is not used)."""

    def __init__(self, inner_dim: int, dim: int, bias: bool = False) -> None:
        super().__init__(inner_dim, dim, bias=bias)

    def forward(
        self, attended: Tensor, query_input: Tensor | None = None, own: Tensor | None = None
    ) -> Tensor:
        """attended (b n e) -> (b n d); the query input and the queries' own values (read by
        other output stages) are not used."""
        return super().forward(attended)


class AttentionOnAttention(nn.Module):
    """Output stage: gate the attention result by the query it answers."""

    def __init__(self, inner_dim: int, dim: int, dim_out: int | None = None) -> None:
        super().__init__()
        dim_out = dim_out or dim
        self.to_info = nn.Linear(inner_dim + dim, dim_out)
        self.to_gate = nn.Linear(inner_dim + dim, dim_out)

    def forward(self, attended: Tensor, query_input: Tensor, own: Tensor | None = None) -> Tensor:
        """attended (b n e), query_input (b n d) -> (b n d_out)."""
        both = torch.cat((attended, query_input), dim=-1)
        return self.to_gate(both).sigmoid() * self.to_info(both)


AOA_SPEC = FeatureSpec(
    "on_attn",
    "1908.06954",
    "output",
    enabled=lambda ctx: ctx.config.on_attn,
    build=lambda ctx: AttentionOnAttention(
        ctx.projection.heads * ctx.projection.v_dim, ctx.dim, ctx.dim_out
    ),
    slot="output",
)
