"""The newest query rows of a layer's score maps, kept next to its keys for decoding.

A convolution over the attention scores along the query axis (Multi-Token Attention, arXiv
2504.00927) reads the c_q - 1 query rows before each query. With a cache, earlier calls
computed those rows. :class:`QueryTailEntry` wraps the layer's entry and keeps, per stage
("pre": the logits entering the convolution before the softmax; "post": the weights entering
the one after it), the newest rows of the convolution's input exactly as they entered it
(masked cells and padded queries already 0). A kept row never changes: every key added later
lies in its future, where it is masked (0). So the kept rows are extended with zero columns.

Keys are placed by absolute position. Once a sliding cache drops old keys, the kept rows still
hold the columns the key kernel reaches from the oldest key held (``reach`` = (c_k - 1) / 2 to
its left); the current rows are 0 there (those keys are no longer visible to them). Keys
without a position ("free": learned memory key/values) are kept as a separate block.

Shape legend: b batch, h heads, r kept rows, i queries of a call, f free keys, p positional key
columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from x_attn.cache.entry import CacheEntry, EntryWrapper, HeldKeys, KeyRows, Project
from x_attn.masks.spec import Span


@dataclass
class TailRows:
    """Kept rows of one stage.

    Attributes:
        free: (b, h, r, f) columns of the free keys.
        keys: (b, h, r, p) columns of the positional keys at the absolute positions ``span``.
        span: the key positions of the columns of ``keys``.
        stop: the position after the last kept query row (the rows are stop - r ... stop - 1).
    """

    free: Tensor
    keys: Tensor
    span: Span
    stop: int


@dataclass
class Canvas:
    """The kept rows on top of a call's rows, aligned on the key positions.

    Attributes:
        free: (b, h, r + i, f); keys: (b, h, r + i, offset + p).
        rows: r, the kept rows on top.
        offset: columns of keys no longer held, in front of this call's first key column.
    """

    free: Tensor
    keys: Tensor
    rows: int
    offset: int


class QueryTailEntry(EntryWrapper):
    """A layer's entry plus the newest query rows of its score convolutions (per stage).

    Attributes:
        tails: stage name -> :class:`TailRows`.
        new_start: position of the first new key row of the last call (before the queries
            when Transformer-XL memories were prepended), or None before any call.
    """

    def __init__(self, inner: CacheEntry, tails: dict[str, TailRows] | None = None) -> None:
        super().__init__(inner)
        self.tails: dict[str, TailRows] = dict(tails or {})
        self.new_start: int | None = None

    def update(self, new: KeyRows, project: Project) -> HeldKeys:
        self.new_start = new.span.start
        return super().update(new, project)

    def rewrap(self, inner: CacheEntry, index: Tensor) -> QueryTailEntry:
        picked = {
            stage: TailRows(t.free[index], t.keys[index], t.span, t.stop)
            for stage, t in self.tails.items()
        }
        return QueryTailEntry(inner, picked)

    def fork(self) -> QueryTailEntry:
        twin = super().fork()
        assert isinstance(twin, QueryTailEntry)
        twin.tails = dict(self.tails)  # _keep rebinds a stage, never writes into a TailRows
        return twin

    def stack(
        self, stage: str, free: Tensor, keys: Tensor, q: Span, k: Span, rows: int, reach: int
    ) -> Canvas:
        """The kept rows of ``stage`` on top of this call's ``free`` (b, h, i, f) and ``keys``
        (b, h, i, p) (queries ``q``, positional keys ``k``); keeps the newest ``rows`` rows,
        over the key columns from ``k.start - reach``, for the next call."""
        tail = self.tails.get(stage)
        if tail is None:
            canvas = Canvas(free, keys, 0, 0)
        else:
            if tail.stop != q.start or tail.span.stop > k.stop or tail.span.start > k.start:
                raise ValueError(
                    f"KV cache: this layer keeps query rows before position {tail.stop} (keys "
                    f"{tail.span.start}..{tail.span.stop - 1}), but the queries start at "
                    f"{q.start} (keys {k.start}..{k.stop - 1}); pass the cache this model "
                    "returned for this sequence (or a fresh one)"
                )
            offset = k.start - tail.span.start
            old = F.pad(tail.keys, (0, k.stop - tail.span.stop))
            new = F.pad(keys, (offset, 0))
            canvas = Canvas(
                _cat_rows(tail.free, free), _cat_rows(old, new), tail.keys.shape[-2], offset
            )
        if rows > 0:
            self._keep(stage, canvas, k, q.stop, rows, reach)
        return canvas

    def _keep(self, stage: str, canvas: Canvas, k: Span, stop: int, rows: int, reach: int) -> None:
        first = max(k.start - canvas.offset, k.start - reach)  # oldest key column worth keeping
        keys = canvas.keys[..., -rows:, first - (k.start - canvas.offset) :]
        self.tails[stage] = TailRows(canvas.free[..., -rows:, :], keys, Span(first, k.stop), stop)


def _cat_rows(top: Tensor, bottom: Tensor) -> Tensor:
    return torch.cat((top.to(bottom.dtype), bottom), dim=-2)


def find_tail(entry: CacheEntry | None) -> QueryTailEntry | None:
    """The :class:`QueryTailEntry` in ``entry``'s chain of wrappers, or None."""
    while isinstance(entry, EntryWrapper):
        if isinstance(entry, QueryTailEntry):
            return entry
        entry = entry.inner
    return None
