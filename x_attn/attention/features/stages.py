"""Base classes of the modules that act on head tensors, and how one call binds them.

Three stages of :class:`x_attn.attention.attention.Attention` act on per-head tensors:

* "qk": :class:`HeadTransform`, inside the projection, on the queries and keys of the rows
  projected, before positions are applied (QK-norm, QK RMSNorm). Keys without a position
  (memory key/values) get :meth:`HeadTransform.free_k`.
* "values": :class:`ValueTransform`, on the values of the new key rows, before the cache
  stores them (value residual, value RMSNorm). :class:`BoundKeys` is the projection's key
  function of one call with these transforms applied; it keeps the raw values it projected,
  which the first layer of a stack hands to the later ones (value residual).
* "heads": :class:`OutputGate`, on the attention output per head, with the query input, before
  the heads are merged (head scale, value gates, MTA's head norm).

Each transform is row-wise (one key or query position at a time), so cached decoding equals a
full forward.

Shape legend: b batch, h query heads, hk key heads, hv value heads, i queries, j key rows,
dq query/key head dim, dv value head dim, d model dim (dc: the key rows' input dim).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

if TYPE_CHECKING:
    from x_attn.attention.projections.base import Projection
    from x_attn.positional.context import RowPositions


class HeadTransform(nn.Module):
    """Per-head query/key transform before positions; identity by default."""

    def q(self, t: Tensor) -> Tensor:
        """(b, h, i, dq) -> (b, h, i, dq)."""
        return t

    def k(self, t: Tensor) -> Tensor:
        """(b, hk, j, dq) -> (b, hk, j, dq), keys of positional rows."""
        return t

    def free_k(self, t: Tensor) -> Tensor:
        """(b, hk, m, dq) -> (b, hk, m, dq), keys without a position (memory key/values)."""
        return t


class ValueTransform(nn.Module):
    """Transform of the values of the new key rows (before the cache)."""

    def forward(self, v: Tensor, rows: Tensor, residual: Tensor | None) -> Tensor:
        """v (b, hv, j, dv), rows (b, j, dc) the key rows' input, residual (b, hv, j, dv) the
        first layer's raw values of the same rows (or None) -> (b, hv, j, dv)."""
        raise NotImplementedError


class OutputGate(nn.Module):
    """Per-head attention output transform, before the heads are merged."""

    def forward(self, out: Tensor, x: Tensor) -> Tensor:
        """out (b, h, i, dv), x (b, i, d) the query input -> (b, h, i, dv)."""
        raise NotImplementedError


class BoundKeys:
    """The projection's key function for one call, with the layer's value transforms.

    Attributes:
        values: the raw values (b, hv, j, dv) of the rows it projected (None until it projects,
            and None when the layer has no value transform).
    """

    __slots__ = ("proj", "transforms", "residual", "values")

    def __init__(
        self, proj: Projection, transforms: tuple[ValueTransform, ...], residual: Tensor | None
    ) -> None:
        self.proj, self.transforms, self.residual = proj, transforms, residual
        self.values: Tensor | None = None

    def __call__(self, x: Tensor, pos: RowPositions) -> Any:
        payload = self.proj.keys(x, pos)
        if not self.transforms:
            return payload
        return self.proj.map_values(payload, self._values_of(x))

    def _values_of(self, rows: Tensor) -> Callable[[Tensor], Tensor]:
        def transform(v: Tensor) -> Tensor:
            self.values = v
            for t in self.transforms:
                v = t(v, rows, self.residual)
            return v

        return transform
