"""Explicit sparse attention (Zhao et al., arXiv 1912.11637).

Only the k largest logits of each query row survive; the rest are masked before the softmax.
"""

from __future__ import annotations

import torch
from torch import Tensor

from x_attn.attention.features import ScoreFeature
from x_attn.attention.features.spec import FeatureSpec


class SparseTopK(ScoreFeature):
    """Keep the top-k (masked) logits per row; with k >= number of keys it does nothing."""

    def __init__(self, k: int, flag: str = "attn_sparse_topk") -> None:
        super().__init__()
        self.k, self.flag = k, flag

    def on_masked(self, sim: Tensor, mask: Tensor | None) -> Tensor:
        if self.k >= sim.shape[-1]:
            return sim
        top = sim.topk(self.k, dim=-1).indices
        keep = torch.zeros_like(sim, dtype=torch.bool).scatter_(-1, top, True)
        if mask is not None:
            keep = keep & mask
        return sim.masked_fill(~keep, -torch.finfo(sim.dtype).max)


SPARSE_TOPK_SPEC = FeatureSpec(
    "sparse_topk",
    "1912.11637",
    "masked",
    enabled=lambda ctx: ctx.config.sparse_topk is not None,
    build=lambda ctx: SparseTopK(ctx.config.sparse_topk, flag=ctx.flag("sparse_topk")),
    needs_scores=True,
)
