"""The cache of a whole stack: one entry per attention layer and the positions processed.

Shape legend: b batch, j keys held.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from x_attn.cache.entry import CacheEntry
from x_attn.cache.inputs import SeenInputs
from x_attn.masks.spec import Span
from x_attn.validation_inputs import check_batch_index


class KVCache:
    """One :class:`CacheEntry` per attention layer (self and cross), in layer order.

    Each layer creates its own entry on first use (``KVCache.empty`` leaves the slots empty),
    so layers may keep different things. Entries know the absolute positions and padding of
    what they hold; the cache counts the positions processed, and how many were real per row
    (padding takes no position, see :mod:`x_attn.positional.row_positions`).

    A cache is a value: a forward given a cache works on a :meth:`fork` and returns it, so the
    cache passed in still describes the same sequence and can be continued again.

    Args:
        entries: the entries (or None for slots the layers fill).
        length: positions already processed (keys carrying a position), counted from 0; the
            next token sits at absolute position ``length``.
        key_mask: for entries given as raw tensors: the (b, j) padding of their keys.
        dropped: for entries given as raw tensors: the absolute position of their first key.
    """

    def __init__(
        self,
        entries: Sequence[CacheEntry | None] | None = None,
        length: int = 0,
        key_mask: Tensor | None = None,
        dropped: int = 0,
    ) -> None:
        self.entries: list[CacheEntry | None] = list(entries) if entries is not None else []
        self.length = length
        # (b,) real positions among 0 ... length - 1 per row; None: all were real
        self._real: Tensor | None = None
        # what a sequence wrapper fed in (bookkeeping, not keys: kept out of cache byte counts)
        self._inputs = SeenInputs()
        # custom positions (forward's pos=) of every slot so far, (b|1, h|1, length), else None
        self.position_values: Tensor | None = None
        for entry in self.entries:
            if entry is not None:
                entry.adopt(dropped, key_mask)

    def __repr__(self) -> str:
        kinds = ", ".join("empty" if e is None else type(e).__name__ for e in self.entries)
        return f"KVCache(length={self.length}, kept={self.kept}, entries=[{kinds}])"

    @classmethod
    def empty(cls, num_layers: int) -> KVCache:
        """A cache whose ``num_layers`` entries each attention layer creates on first use."""
        return cls(entries=[None] * num_layers)

    def entry(self, index: int, create: Callable[[], CacheEntry]) -> CacheEntry:
        """Entry ``index``, created by ``create`` (the layer's factory) if still empty."""
        found = self.entries[index]
        if found is None:
            found = self.entries[index] = create()
        return found

    def _positional(self) -> list[CacheEntry]:
        return [e for e in self.entries if e is not None and e.positional and e.held is not None]

    def _spans(self) -> list[Span]:
        """The positions held by each entry whose keys carry positions."""
        spans = [e.held for e in self.entries if e is not None and e.positional]
        return [span for span in spans if span is not None]

    @property
    def kept(self) -> int:
        """Positions still held by the layer that holds the most (``length`` before a slide)."""
        return max((len(span) for span in self._spans()), default=self.length)

    @property
    def dropped(self) -> int:
        """Oldest positions no layer holds any more (evicted by :meth:`slide`)."""
        return self.length - self.kept

    @property
    def first_position(self) -> int:
        """The oldest absolute position any layer still holds (``length`` when none)."""
        oldest = [e.oldest for e in self.entries if e is not None and e.positional]
        return min((p for p in oldest if p is not None), default=self.length)

    @property
    def key_mask(self) -> Tensor | None:
        """(b, kept) padding of the positions held by the layer that holds the most, or None."""
        entries = self._positional()
        if not entries:
            return None
        return max(entries, key=lambda e: len(e.held)).key_mask

    @property
    def batch(self) -> int | None:
        """Batch size of what the entries hold, or None while they hold nothing."""
        return next((e.batch for e in self.entries if e is not None and e.batch), None)

    @property
    def real(self) -> Tensor | None:
        """(b,) real (unpadded) positions processed per row, or None when all were real."""
        return self._real

    @property
    def inputs(self) -> SeenInputs:
        """The inputs a sequence wrapper has fed into this cache (memory tokens excluded)."""
        return self._inputs

    def _copy(
        self,
        entries: list[CacheEntry | None],
        real: Tensor | None,
        inputs: SeenInputs,
        values: Tensor | None,
    ) -> KVCache:
        out = KVCache(entries=entries, length=self.length)
        out._real, out._inputs, out.position_values = real, inputs, values
        return out

    def fork(self) -> KVCache:
        """A copy a forward may update, leaving this cache as it is (entries share storage)."""
        entries = [None if e is None else e.fork() for e in self.entries]
        return self._copy(entries, self._real, self._inputs, self.position_values)

    def advance(self, n: int, real: Tensor | None) -> None:
        """Count ``n`` more positions (``real``: real positions per row after them, or None)."""
        self.length += n
        self._real = real

    def record_inputs(self, inputs: SeenInputs) -> None:
        """What the sequence wrapper has fed in, after this forward."""
        self._inputs = inputs

    def select(self, index: Tensor) -> KVCache:
        """A cache restricted to the batch rows in ``index`` (for beam or batch pruning)."""
        check_batch_index(index, self.batch, "KVCache.select")
        entries = [None if e is None else e.select(index) for e in self.entries]
        real = None if self._real is None else self._real[index]
        values = self.position_values
        if values is not None and values.shape[0] > 1:
            values = values[index.to(values.device)]
        return self._copy(entries, real, self._inputs.select(index), values)

    def slide(self, keep: int, layers: Sequence[int] | None = None) -> None:
        """Keep only the newest ``keep`` positions in the self-attention entries ``layers``.

        Absolute positions are unchanged (``length`` still counts every processed token), so
        the next query is positioned correctly; it just sees fewer keys (a sliding window).
        ``layers`` defaults to every entry whose keys carry positions (cross-attention entries
        never slide).
        """
        indices = range(len(self.entries)) if layers is None else layers
        for index in indices:
            entry = self.entries[index]
            # named layers all slide: an entry that cannot drop keys (a running sum) refuses
            if entry is not None and (entry.positional or layers is not None):
                entry.keep_newest(keep)


def stale_loop_message(owner: str, how: str) -> str:
    """Why a call with only new inputs and a cache must return the updated cache."""
    return (
        f"{owner}: a forward with 'cache' and only the new inputs must return the updated "
        f"cache: pass {how} and continue from the cache it returns. The cache passed in is "
        "left as it was (caches are values), so a loop that keeps passing it would put every "
        "new input at the same position"
    )
