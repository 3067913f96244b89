"""Collaborative heads (Cordonnier et al., arXiv 2006.16362).

Queries and keys use one shared projection to ``dk = round(compression * heads * dim_head)``
dims; head h sees the queries scaled by its own mixing vector m_h, so
logits_h = (x W_q diag(m_h)) (x W_k)^T. Keys come out with a single head that broadcasts.
With compression 1 and one-hot block mixing vectors this is exactly multi-head attention.

Shape legend: b batch, i / j sequence, h heads, d model dim, dh head dim, dk shared key/query
dim.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureSpec
from x_attn.attention.projections.base import Projection
from x_attn.positional.context import RowPositions


class CollaborativeProjection(Projection):
    """Shared queries times each head's mixing vector; one shared key head."""

    qk_dim_options = ("collab_compression", "dim_head")  # dk = round(compression * h * dh)

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        compression: float,
        dim_context: int | None = None,
    ) -> None:
        super().__init__()
        dim_context = dim_context or dim
        self.heads, self.k_heads, self.v_heads, self.v_dim = heads, 1, heads, dim_head
        self.qk_dim = max(1, round(compression * heads * dim_head))
        self.to_q = nn.Linear(dim, self.qk_dim, bias=False)
        self.to_k = nn.Linear(dim_context, self.qk_dim, bias=False)
        self.to_v = nn.Linear(dim_context, heads * dim_head, bias=False)
        self.mixing = nn.Parameter(torch.randn(heads, self.qk_dim) / self.qk_dim**0.5 + 1.0)

    def queries(self, x: Tensor, pos: RowPositions) -> Tensor:
        """(b i d) -> (b h i dk)."""
        q = rearrange(self.to_q(pos.infuse(x)), "b i dk -> b 1 i dk")
        q = q * rearrange(self.mixing, "h dk -> 1 h 1 dk").to(q.dtype)
        return self.finish_queries(q, pos)

    def keys(self, x: Tensor, pos: RowPositions) -> tuple[Tensor, Tensor]:
        """(b j d) -> shared keys (b 1 j dk), values (b h j dh)."""
        k = rearrange(self.to_k(pos.infuse(x)), "b j dk -> b 1 j dk")
        v = rearrange(self.to_v(x), "b j (h d) -> b h j d", h=self.heads)
        return self.finish_keys(k, pos), v


COLLAB_HEADS_SPEC = FeatureSpec(
    "collab_heads",
    "2006.16362",
    "project",
    enabled=lambda ctx: ctx.config.collab_heads,
    build=lambda ctx: CollaborativeProjection(
        ctx.dim, ctx.heads, ctx.config.dim_head, ctx.config.collab_compression, ctx.dim_context
    ),
    slot="projection",
)
