"""The per-layer cache protocol: what an attention layer keeps between decoding calls.

Each attention layer creates its own entry (``Attention.new_cache_entry()`` for
self-attention, ``new_context_entry()`` for cross-attention), so layers of one stack may keep
different things: keys and values (:class:`x_attn.cache.kv.KVEntry`), a context projected once
(:class:`x_attn.cache.context.ContextEntry`), and later a ring buffer of the last w positions, a
latent, a running state, or the last query rows a convolution needs. An entry knows the
absolute positions and the padding of what it holds; the stack only counts positions.

Entries are values: a forward updates a :meth:`CacheEntry.fork` of each entry and returns a
new cache, so one cache can be continued several times. Per call, the layer hands the entry
the new key rows (:class:`KeyRows`) and its projection's ``keys`` function; the entry projects
what it needs, stores it and returns every key the layer attends to now (:class:`HeldKeys`).
Adding a cache kind: one file with a :class:`CacheEntry` subclass, chosen by the feature that
needs it.

Shape legend: b batch, j keys, d input dim.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from x_attn.masks.spec import Span
from x_attn.positional.context import RowPositions

Project = Callable[[Tensor, RowPositions], Any]


@dataclass(slots=True)
class KeyRows:
    """The key/value input of one attention call, before projection.

    Attributes:
        x: (b, j, d) rows (Transformer-XL memories + the new tokens, or a context).
        span: their absolute positions (a context's rows count from 0).
        mask: (b, j) padding, True = real, or None.
        positions: positional tables of these rows, for the projection.
    """

    x: Tensor
    span: Span
    mask: Tensor | None
    positions: RowPositions


@dataclass(slots=True)
class HeldKeys:
    """Every key a layer attends to in this call.

    Attributes:
        payload: what the projection made of them (for multi-head attention: (k, v)).
        span: absolute positions of the contiguous keys (the last ones of the payload).
        mask: (b, j) padding of every key (pinned and span), True = real, or None.
        pinned: absolute positions of older keys the entry keeps in front of the span (the
            global tokens of a sliding-window cache); () for most entries.
    """

    payload: Any
    span: Span
    mask: Tensor | None
    pinned: tuple[int, ...] = ()


class CacheEntry:
    """One attention layer's keys between calls.

    Attributes:
        kind: the entry family ("kv", "context", ...), for kernels that read entries.
        positional: its keys carry positions (they slide with a window; a context does not).
    """

    kind: ClassVar[str] = ""
    positional: ClassVar[bool] = True

    def update(self, new: KeyRows, project: Project) -> HeldKeys:
        """Take this call's key rows (projecting what is needed) and return all held keys."""
        raise NotImplementedError

    @property
    def held(self) -> Span | None:
        """Absolute positions of the keys held, or None while empty."""
        raise NotImplementedError

    @property
    def key_mask(self) -> Tensor | None:
        """(b, j) padding of the keys held, or None when all are real."""
        raise NotImplementedError

    @property
    def batch(self) -> int | None:
        """Batch size of what the entry holds, or None while empty."""
        raise NotImplementedError

    def next_position(self) -> int:
        """Where the next new keys start (0 for an empty entry)."""
        held = self.held
        return 0 if held is None else held.stop

    @property
    def oldest(self) -> int | None:
        """The oldest absolute position whose key the entry holds (pinned keys included), or
        None while empty; the stack's positional tables start there."""
        held = self.held
        return None if held is None else held.start

    def check_continues(self, new: KeyRows, what: str) -> None:
        """ValueError unless ``new`` starts right after the keys held (or nothing is held)."""
        if self.held is not None and new.span.start != self.next_position():
            raise ValueError(
                f"{what}: this layer holds positions up to {self.next_position() - 1}, but the "
                f"new keys start at position {new.span.start}; pass the cache this model "
                "returned for this sequence (or a fresh one)"
            )

    def select(self, index: Tensor) -> CacheEntry:
        """A copy restricted to the batch rows ``index``."""
        raise NotImplementedError

    def fork(self) -> CacheEntry:
        """A copy that a forward may update, leaving this entry as it is.

        The default is a shallow copy: updates rebind the copy's fields (new tensors, or
        views of a shared buffer past this entry's rows), they never write into this one's.
        """
        return copy.copy(self)

    def keep_newest(self, keep: int) -> None:
        """Drop all but the newest ``keep`` positions (no-op for non-positional entries)."""

    def adopt(self, start: int, key_mask: Tensor | None) -> None:
        """Place keys given as raw tensors at positions from ``start`` (see KVCache)."""


class EntryWrapper(CacheEntry):
    """An entry that keeps more state next to another one (``inner``) and delegates the rest.

    Features wrap their layers' entries through ``FeatureSpec.wrap_entry`` (whichever kind the
    layer has); wrappers compose. A subclass overrides what it adds to, and :meth:`rewrap` so
    that :meth:`select` keeps its own state for the selected batch rows.
    """

    def __init__(self, inner: CacheEntry) -> None:
        self.inner = inner

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.inner.kind

    @property
    def positional(self) -> bool:  # type: ignore[override]
        return self.inner.positional

    def update(self, new: KeyRows, project: Project) -> HeldKeys:
        return self.inner.update(new, project)

    @property
    def held(self) -> Span | None:
        return self.inner.held

    @property
    def key_mask(self) -> Tensor | None:
        return self.inner.key_mask

    @property
    def batch(self) -> int | None:
        return self.inner.batch

    def next_position(self) -> int:
        return self.inner.next_position()

    @property
    def oldest(self) -> int | None:
        return self.inner.oldest

    def select(self, index: Tensor) -> CacheEntry:
        return self.rewrap(self.inner.select(index), index)

    def rewrap(self, inner: CacheEntry, index: Tensor) -> CacheEntry:
        """A wrapper of the same kind around ``inner`` (this one's state at batch ``index``)."""
        return type(self)(inner)

    def fork(self) -> CacheEntry:
        """A shallow copy around a fork of ``inner`` (a subclass copies its mutable state)."""
        twin = copy.copy(self)
        twin.inner = self.inner.fork()
        return twin

    def keep_newest(self, keep: int) -> None:
        self.inner.keep_newest(keep)

    def adopt(self, start: int, key_mask: Tensor | None) -> None:
        self.inner.adopt(start, key_mask)
