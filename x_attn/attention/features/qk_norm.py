"""Query-Key Normalization (Henry et al., arXiv 2010.04245): cosine-similarity attention.

Each query and key head (or each of ``qk_norm_groups`` groups of its dims) is divided by its
L2 norm before positions are applied, so a logit is a cosine similarity (summed over groups)
times a fixed temperature ``qk_norm_scale`` (default 10) instead of ``dim_head ** -0.5``:
logits lie in [-groups * scale, groups * scale]. With ``qk_norm_dim_scale`` (a learned scale
per head and dimension on the normalized queries and keys, as in ViT-22B, Dehghani et al.,
arXiv 2302.05442) the scales start at ``dim_head ** 0.25`` and the temperature is
``dim_head ** -0.5``. Memory key/values are normalized like keys. The normalization acts on q
and k before the kernel, so the fused SDPA kernel still runs the layer.

Shape legend: b batch, h query heads, hk key heads, n rows, g groups, d head dim.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureContext, FeatureSpec
from x_attn.attention.features.stages import HeadTransform
from x_attn.utils import unit_vectors


def l2norm(t: Tensor, groups: int = 1) -> Tensor:
    """(..., g * d) -> each of the g groups of the last dim divided by its L2 norm."""
    t = rearrange(t, "... (g d) -> ... g d", g=groups)
    return rearrange(unit_vectors(t), "... g d -> ... (g d)")


class QKNorm(HeadTransform):
    """L2-normalize query and key heads (by groups), optionally times learned dim scales."""

    def __init__(
        self, heads: int, k_heads: int, dim: int, groups: int, dim_scale: bool, init: float
    ) -> None:
        super().__init__()
        if dim % groups:
            raise ValueError(
                f"attn_qk_norm_groups={groups} must divide the query/key head dim {dim}"
            )
        self.groups = groups
        self.q_scale = nn.Parameter(torch.full((heads, 1, dim), init)) if dim_scale else None
        self.k_scale = nn.Parameter(torch.full((k_heads, 1, dim), init)) if dim_scale else None

    def _norm(self, t: Tensor, scale: nn.Parameter | None) -> Tensor:
        t = l2norm(t, self.groups)
        return t if scale is None else t * scale.to(t.dtype)

    def q(self, t: Tensor) -> Tensor:
        return self._norm(t, self.q_scale)

    def k(self, t: Tensor) -> Tensor:
        return self._norm(t, self.k_scale)

    def free_k(self, t: Tensor) -> Tensor:
        return self._norm(t, self.k_scale)


def _build(ctx: FeatureContext) -> QKNorm:
    proj, config = ctx.projection, ctx.config
    init = config.dim_head**0.25
    return QKNorm(
        proj.heads, proj.k_heads, proj.qk_dim, config.qk_norm_groups, config.qk_norm_dim_scale, init
    )


def _scale(ctx: FeatureContext) -> float:
    config = ctx.config
    return config.dim_head**-0.5 if config.qk_norm_dim_scale else float(config.qk_norm_scale)


QK_NORM_SPEC = FeatureSpec(
    "qk_norm",
    "2010.04245",
    "qk",
    enabled=lambda ctx: ctx.config.qk_norm,
    build=_build,
    scale=_scale,
)
