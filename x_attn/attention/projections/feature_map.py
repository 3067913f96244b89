"""A projection whose queries and keys pass through a feature map (linear attention).

Linear attention (arXiv 2006.16236) and Performer (arXiv 2009.14794) replace exp(q . k) by
phi(q) . phi(k). :class:`FeatureMapProjection` wraps whatever projection a layer has (multi-head,
key/value heads, collaborative heads): positions are applied first, by the inner projection
(rotary rotates q and k, then phi maps them: a positive kernel of the rotated vectors), then
phi. The payload a cache entry receives stays the inner one (raw keys); :meth:`expand` maps
the keys, so phi is applied to exactly the keys of a call.

Shape legend: b batch, i queries, j keys, h heads, hk key heads, dq query/key head dim, m
feature dim, dv value head dim.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from x_attn.attention.projections.base import Projection
from x_attn.positional.context import RowPositions

if TYPE_CHECKING:
    from x_attn.attention.features.stages import HeadTransform


class FeatureMap(nn.Module):
    """phi: (..., dq) -> (..., m), positive; ``is_query`` tells queries from keys."""

    def forward(self, x: Tensor, is_query: bool) -> Tensor:
        raise NotImplementedError


class FeatureMapProjection(Projection):
    """``inner``'s queries (b h i dq) -> phi (b h i m); keys (b hk j dq) -> phi (b hk j m)."""

    def __init__(self, inner: Projection, feature_map: FeatureMap) -> None:
        super().__init__()
        self.inner, self.feature_map = inner, feature_map
        self.heads, self.k_heads, self.v_heads = inner.heads, inner.k_heads, inner.v_heads
        self.qk_dim, self.v_dim = inner.qk_dim, inner.v_dim  # rotary acts on the inner dims
        # the inner head layout's logit scale, separate rotary part and value transforms hold
        self.scale, self.rotary_dim = inner.scale, inner.rotary_dim
        self.transformable = inner.transformable

    def map_values(self, payload: Any, fn: Callable[[Tensor], Tensor]) -> Any:
        return self.inner.map_values(payload, fn)

    def use_head_transforms(self, transforms: Sequence[HeadTransform]) -> None:
        """The inner projection applies them (QK-norm), before positions and phi."""
        self.inner.use_head_transforms(transforms)

    def queries(self, x: Tensor, pos: RowPositions) -> Tensor:
        return self.feature_map(self.inner.queries(x, pos), is_query=True)

    def keys(self, x: Tensor, pos: RowPositions) -> Any:
        return self.inner.keys(x, pos)

    def expand(self, payload: Any) -> tuple[Tensor, Tensor]:
        k, v = self.inner.expand(payload)
        return self.feature_map(k, is_query=False), v
