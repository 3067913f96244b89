"""Query / key / value projections.

Shape legend: b batch, n / i / j sequence, h heads, d model dim, dh head dim,
dk shared key/query dim of collaborative heads.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn


class MultiHeadProjection(nn.Module):
    """Standard multi-head projections: q (b h i dh), k and v (b h j dh)."""

    def __init__(self, dim: int, heads: int, dim_head: int, dim_context: int | None = None) -> None:
        super().__init__()
        dim_context = dim_context or dim
        inner = heads * dim_head
        self.heads, self.qk_dim, self.k_heads = heads, dim_head, heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim_context, inner, bias=False)
        self.to_v = nn.Linear(dim_context, inner, bias=False)

    def queries(self, q_in: Tensor) -> Tensor:
        """(b i d) -> (b h i dh)."""
        return rearrange(self.to_q(q_in), "b i (h d) -> b h i d", h=self.heads)

    def keys_values(self, k_in: Tensor, v_in: Tensor) -> tuple[Tensor, Tensor]:
        """(b j d), (b j d) -> (b h j dh), (b h j dh)."""
        split = "b j (h d) -> b h j d"
        k = rearrange(self.to_k(k_in), split, h=self.heads)
        v = rearrange(self.to_v(v_in), split, h=self.heads)
        return k, v


class CollaborativeProjection(nn.Module):
    """Collaborative heads (Cordonnier et al., arXiv 2006.16362).

    Queries and keys use one shared projection to ``dk = round(compression * heads * dim_head)``
    dims; head h sees the queries scaled by its own mixing vector m_h, so
    logits_h = (x W_q diag(m_h)) (x W_k)^T. Keys come out with a single head that broadcasts.
    With compression 1 and one-hot block mixing vectors this is exactly multi-head attention.
    """

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
        self.heads, self.k_heads = heads, 1
        self.qk_dim = max(1, round(compression * heads * dim_head))
        self.to_q = nn.Linear(dim, self.qk_dim, bias=False)
        self.to_k = nn.Linear(dim_context, self.qk_dim, bias=False)
        self.to_v = nn.Linear(dim_context, heads * dim_head, bias=False)
        self.mixing = nn.Parameter(torch.randn(heads, self.qk_dim) / self.qk_dim**0.5 + 1.0)

    def queries(self, q_in: Tensor) -> Tensor:
        """(b i d) -> (b h i dk): shared queries times each head's mixing vector."""
        q = rearrange(self.to_q(q_in), "b i dk -> b 1 i dk")
        return q * rearrange(self.mixing, "h dk -> 1 h 1 dk").to(q.dtype)

    def keys_values(self, k_in: Tensor, v_in: Tensor) -> tuple[Tensor, Tensor]:
        """(b j d), (b j d) -> shared keys (b 1 j dk), values (b h j dh)."""
        k = rearrange(self.to_k(k_in), "b j dk -> b 1 j dk")
        v = rearrange(self.to_v(v_in), "b j (h d) -> b h j d", h=self.heads)
        return k, v
