"""RMSNorm of query, key and value heads (ViT-22B, Dehghani et al., arXiv 2302.05442).

``attn_qk_rmsnorm`` normalizes every query and key head, ``attn_k_rmsnorm`` the keys only,
before positions are applied; ``attn_value_rmsnorm`` normalizes every value head before the
cache stores it (used by AlphaGenome and ByteDance's GR3 for stability, per x-transformers).
Each is ``x / rms(x) * (1 + gamma)`` over a head's dims, with a learned gamma per head and
dimension starting at 0. The logit scale stays ``dim_head ** -0.5``; the fused SDPA kernel
still runs the layer.

Shape legend: b batch, h heads (of the tensor normalized), n rows, d head dim, dc the key
rows' input dim.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureContext, FeatureSpec
from x_attn.attention.features.stages import HeadTransform, ValueTransform
from x_attn.utils import unit_vectors


class HeadRMSNorm(nn.Module):
    """(b, h, n, d) -> x / rms(x) * (1 + gamma), gamma (h, 1, d) initialised at 0."""

    def __init__(self, heads: int, dim: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.zeros(heads, 1, dim))

    def forward(self, t: Tensor) -> Tensor:
        return unit_vectors(t) * self.scale * (self.gamma.to(t.dtype) + 1.0)


class QKRMSNorm(HeadTransform):
    """RMSNorm of the key heads, and of the query heads unless ``keys_only``."""

    def __init__(self, heads: int, k_heads: int, dim: int, keys_only: bool) -> None:
        super().__init__()
        self.q_norm = None if keys_only else HeadRMSNorm(heads, dim)
        self.k_norm = HeadRMSNorm(k_heads, dim)

    def q(self, t: Tensor) -> Tensor:
        return t if self.q_norm is None else self.q_norm(t)

    def k(self, t: Tensor) -> Tensor:
        return self.k_norm(t)


class ValueRMSNorm(ValueTransform):
    """RMSNorm of the value heads of the new key rows."""

    def __init__(self, heads: int, dim: int) -> None:
        super().__init__()
        self.norm = HeadRMSNorm(heads, dim)

    def forward(self, v: Tensor, rows: Tensor, residual: Tensor | None) -> Tensor:
        return self.norm(v)


def _qk(ctx: FeatureContext) -> QKRMSNorm:
    proj = ctx.projection
    return QKRMSNorm(proj.heads, proj.k_heads, proj.qk_dim, keys_only=ctx.config.k_rmsnorm)


QK_RMSNORM_SPEC = FeatureSpec(
    "qk_rmsnorm",
    "2302.05442",
    "qk",
    enabled=lambda ctx: ctx.config.qk_rmsnorm or ctx.config.k_rmsnorm,
    build=_qk,
    flag_of=lambda ctx: ctx.flag("k_rmsnorm" if ctx.config.k_rmsnorm else "qk_rmsnorm"),
)

VALUE_RMSNORM_SPEC = FeatureSpec(
    "value_rmsnorm",
    "",
    "values",
    enabled=lambda ctx: ctx.config.value_rmsnorm,
    build=lambda ctx: ValueRMSNorm(ctx.projection.v_heads, ctx.projection.v_dim),
)
