"""Multi-head projections (Vaswani et al., arXiv 1706.03762), with key/value heads.

``kv_heads`` key/value heads serve ``heads`` query heads: hk == h is multi-head attention,
hk == 1 shares one key/value head, any divisor groups the query heads (query head t uses kv
head t // (h / hk)). ``bias=True`` gives the three maps biases (``attn_qkv_bias``; GPT-2 and
Qwen2 checkpoints have them). Queries may pass through a low-rank latent first
(``dim_latent_q``: the query compression of DeepSeek-V2, arXiv 2405.04434, also available
without latent keys).

Shape legend: b batch, i / j sequence, h query heads, hk key/value heads, d model dim,
dh head dim.
"""

from __future__ import annotations

from torch import Tensor, nn

from x_attn.attention.projections.base import Projection
from x_attn.attention.projections.latent import latent_input
from x_attn.positional.context import RowPositions


class MultiHeadProjection(Projection):
    """q (b h i dh), payload (k, v) with k and v (b hk j dh)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        dim_context: int | None = None,
        kv_heads: int | None = None,
        dim_latent_q: int | None = None,
        bias: bool = False,
    ) -> None:
        super().__init__()
        dim_context = dim_context or dim
        kv_heads = kv_heads or heads
        if heads % kv_heads:
            raise ValueError(
                f"MultiHeadProjection: kv_heads={kv_heads} must divide heads={heads} "
                "(each key/value head serves a group of query heads)"
            )
        self.heads, self.qk_dim, self.v_dim = heads, dim_head, dim_head
        self.k_heads = self.v_heads = kv_heads
        self.to_latent_q = latent_input(dim, dim_latent_q)
        self.to_q = nn.Linear(dim_latent_q or dim, heads * dim_head, bias=bias)
        self.to_k = nn.Linear(dim_context, kv_heads * dim_head, bias=bias)
        self.to_v = nn.Linear(dim_context, kv_heads * dim_head, bias=bias)

    def queries(self, x: Tensor, pos: RowPositions) -> Tensor:
        q = self.to_q(self.to_latent_q(pos.infuse(x)))
        return self.finish_queries(split_heads(q, self.heads), pos)

    def keys(self, x: Tensor, pos: RowPositions) -> tuple[Tensor, Tensor]:
        k = split_heads(self.to_k(pos.infuse(x)), self.k_heads)
        v = split_heads(self.to_v(x), self.v_heads)
        return self.finish_keys(k, pos), v


def split_heads(t: Tensor, heads: int) -> Tensor:
    """(b, n, h * dh) -> (b, h, n, dh), i.e. ``rearrange(t, "b n (h d) -> b h n d")``.

    Written with tensor methods: this runs three times per layer and decode step, where
    einops' pattern lookup costs more than the view itself.
    """
    return t.reshape(*t.shape[:-1], heads, t.shape[-1] // heads).transpose(1, 2)


def merge_heads(t: Tensor) -> Tensor:
    """(b, h, n, dh) -> (b, n, h * dh), i.e. ``rearrange(t, "b h n d -> b n (h d)")``."""
    return t.transpose(1, 2).flatten(2)
