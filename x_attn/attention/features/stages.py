"""Base classes of the modules that act on head tensors, and how one call binds them.

Four stages of :class:`x_attn.attention.attention.Attention` act on per-head tensors:

* "qk": :class:`HeadTransform`, inside the projection, on the queries and keys of the rows
  projected, before positions are applied (QK-norm, QK RMSNorm). Keys without a position
  (memory key/values) get :meth:`HeadTransform.free_k`.
* "values": :class:`ValueTransform`, on the values of the new key rows, before the cache
  stores them (value residual, value RMSNorm). :class:`BoundKeys` is the projection's key
  function of one call with these transforms applied; it keeps the raw values it projected,
  which the first layer of a stack hands to the later ones (value residual).
* "bias": :class:`BiasStage`, after the extend-k/v stage, adds a query-dependent logit bias over
  the held keys and may wrap the bound score hooks (Shaw's relative keys and values, CoPE,
  FoX). Every bias stage of a call reads the same :class:`BiasCall`, which the layer builds
  once per call; a new bias stage takes what it needs from it.
* "heads": :class:`OutputGate`, on the attention output per head, with the query input, before
  the heads are merged (head scale, value gates, MTA's head norm).

Each transform is row-wise (one key or query position at a time), so cached decoding equals a
full forward.

Shape legend: b batch, h query heads, hk key heads, hv value heads, i queries, j key rows,
dq query/key head dim, dv value head dim, d model dim (dc: the key rows' input dim).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch import Tensor, nn

from x_attn.masks.causal import CAUSAL

if TYPE_CHECKING:
    from x_attn.attention.projections.base import Projection
    from x_attn.cache.entry import CacheEntry
    from x_attn.kernels.manual import ScoreHooks
    from x_attn.masks.spec import AttnMask
    from x_attn.positional.context import PositionContext, RowPositions


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
    """Transform of the values of the new key rows (before the cache).

    ``free_values``: the transform is part of what attention computes over every value, so it
    also maps call-time additional values (key rows without input rows: ``rows`` and
    ``residual`` are None then), as LASER's exp does; False (default): it reads the rows.
    """

    free_values = False

    def forward(self, v: Tensor, rows: Tensor, residual: Tensor | None) -> Tensor:
        """v (b, hv, j, dv), rows (b, j, dc) the key rows' input, residual (b, hv, j, dv) the
        first layer's raw values of the same rows (or None) -> (b, hv, j, dv)."""
        raise NotImplementedError


class OutputGate(nn.Module):
    """Per-head attention output transform, before the heads are merged."""

    def forward(self, out: Tensor, x: Tensor) -> Tensor:
        """out (b, h, i, dv), x (b, i, d) the query input -> (b, h, i, dv)."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class BiasCall:
    """What the bias stages of one attention call read (built once per call by the layer).

    Attributes:
        q: (b, h, i, dq) the queries, after positions.
        positions: the call's positional tables (position values of queries and held keys).
        mask: the call's mask description, after the extend-k/v stage: query and held key
            spans, rules, pinned keys, and ``free`` keys without a position (they come first).
        query_input: (b, i, d) the layer's input rows of the queries.
        entry: the layer's cache entry of this call (state a ``wrap_entry`` keeps).
    """

    q: Tensor
    positions: PositionContext
    mask: AttnMask
    query_input: Tensor
    entry: CacheEntry

    @property
    def causal(self) -> bool:
        """Whether the call's mask rules include the causal one."""
        return any(rule.kind == CAUSAL.kind for rule in self.mask.rules)

    def position_rows(self, flag: str) -> tuple[Tensor, Tensor]:
        """(b|1, i) position values of the queries and (b|1, j) of the held positional keys;
        per-head positions are refused, naming ``flag``."""
        rows = []
        for span in (self.mask.q, self.mask.k):
            values = self.positions.values_of(span, self.q.device)
            if values.ndim > 2:
                raise ValueError(
                    f"{flag}: per-head positions (b, h, n) are not supported; pass (n,) or (b, n)"
                )
            rows.append(values.reshape(-1, values.shape[-1]))
        return rows[0], rows[1]

    def add_bias(self, bias: Tensor | None, term: Tensor) -> Tensor:
        """``bias`` plus ``term`` (..., i, j) over the positional keys; the free keys (first
        columns) get 0."""
        term = F.pad(term, (self.mask.free, 0))
        return term if bias is None else bias + term


class BiasStage(nn.Module):
    """A query-dependent logit bias over the held keys; may wrap the bound score hooks."""

    def forward(
        self, call: BiasCall, bias: Tensor | None, hooks: ScoreHooks
    ) -> tuple[Tensor | None, ScoreHooks]:
        """The bias so far (b|1, h|1, i, free + j) or None, and the bound hooks -> both, with
        this stage's term added (or hooks wrapped)."""
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
