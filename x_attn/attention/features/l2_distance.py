"""L2-distance attention (Kim, Papamakarios and Mnih, "The Lipschitz Constant of
Self-Attention", arXiv 2006.04710): logits are minus the squared Euclidean distance.

The logit of query q and key k is ``-scale * |q - k|^2`` instead of ``scale * q . k``. Since
``-|q - k|^2 = 2 q . k - |q|^2 - |k|^2``, it is an ordinary dot product of augmented vectors,

    q' = [2q, -|q|^2, -1],   k' = [k, 1, |k|^2],   q' . k' = -|q - k|^2,

so the layer keeps every kernel (SDPA, manual), the cache and memories: the map wraps the
layer's projection after positions (rotary rotates q and k first; a rotation keeps the norms),
and keys are mapped at each call from the cached (rotated) keys. The logit scale is the
layer's (``dim_head ** -0.5``, or QK-norm's temperature). The paper ties the query and key
projections for a Lipschitz bound; as in x-transformers, they stay separate here.

Shape legend: b batch, h heads, n rows, d query/key head dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from x_attn.attention.features.spec import FeatureContext, FeatureSpec
from x_attn.attention.projections.base import Projection
from x_attn.attention.projections.feature_map import FeatureMap, FeatureMapProjection


class L2DistanceMap(FeatureMap):
    """(b, h, n, d) -> (b, h, n, d + 2): the augmentation whose dot products are -|q - k|^2."""

    def forward(self, x: Tensor, is_query: bool) -> Tensor:
        sq_norm = x.pow(2).sum(dim=-1, keepdim=True)
        if is_query:
            return torch.cat((2 * x, -sq_norm, -torch.ones_like(sq_norm)), dim=-1)
        return torch.cat((x, torch.ones_like(sq_norm), sq_norm), dim=-1)


def _wrap(ctx: FeatureContext):
    """The projection wrapper; refuses learned memory keys (they would skip the map)."""
    if ctx.stack is not None and ctx.stack.shaw_rel_pos:
        raise ValueError(
            f"Attention: shaw_rel_pos adds q . r(i - j) with relative keys as wide as the head, "
            f"which {ctx.flag('l2_distance')} widens by two; drop one of them"
        )
    if ctx.config.num_mem_kv:
        raise ValueError(
            f"Attention: {ctx.flag('num_mem_kv')} adds learned keys after the projection, so "
            f"they would skip {ctx.flag('l2_distance')}'s augmentation; drop one of "
            f"{ctx.flag('num_mem_kv')}, {ctx.flag('l2_distance')}"
        )

    def wrap(inner: Projection) -> Projection:
        return FeatureMapProjection(inner, L2DistanceMap())

    return wrap


L2_DISTANCE_SPEC = FeatureSpec(
    "l2_distance",
    "2006.04710",
    "project",
    enabled=lambda ctx: ctx.config.l2_distance,
    slot="feature_map",
    wrap_projection=_wrap,
)
