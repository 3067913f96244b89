"""The running state of a linear-attention layer: a cache entry whose size does not grow.

Linear attention ("Transformers are RNNs", arXiv 2006.16236) and Performer (arXiv 2009.14794)
attend through sums over the keys seen so far: S = sum_j phi(k_j) v_j^T (m x dv per head) and
z = sum_j phi(k_j) (m per head). Decoding keeps exactly these two sums, whatever the length:
a new token is a rank-1 update. :class:`StateEntry` holds them with the absolute positions
they summarise; the kernel (:mod:`x_attn.kernels.linear`) reads the state before a call and
stores the state after it. Padded keys were left out of the sums (their features were zeroed),
so the entry keeps no padding mask.

The entry is a value: :meth:`fork` copies the fields, and the kernel rebinds ``state`` to new
tensors (it never adds into the held ones), so a forked cache can be continued twice.

Shape legend: b batch, h heads, m feature dim, dv value head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from x_attn.cache.entry import CacheEntry, EntryWrapper, HeldKeys, KeyRows, Project
from x_attn.masks.spec import Span


@dataclass
class StateEntry(CacheEntry):
    """(S (b h m dv), z (b h m)) over the positions ``start ... stop - 1``.

    Attributes:
        state: the sums, or None before any call.
        start, stop: the absolute positions summarised (None before any call).
        chunk: positions per block of the layer's causal chunkwise scan (the kernel reads it).
    """

    state: tuple[Tensor, Tensor] | None = None
    start: int | None = None
    stop: int | None = None
    chunk: int = 64

    kind = "state"
    positional = False  # nothing to slide: the sums cannot drop their oldest keys

    @property
    def held(self) -> Span | None:
        return None if self.start is None else Span(self.start, self.stop)

    @property
    def key_mask(self) -> Tensor | None:
        return None  # padded keys are not in the sums

    @property
    def batch(self) -> int | None:
        return None if self.state is None else self.state[0].shape[0]

    def update(self, new: KeyRows, project: Project) -> HeldKeys:
        """Project the new rows; the kernel attends to them on top of ``state``."""
        if self.stop is not None and new.span.start != self.stop:
            raise ValueError(
                f"KV cache: this linear-attention layer's state sums positions up to "
                f"{self.stop - 1}, but the new keys start at position {new.span.start}; pass "
                "the cache this model returned for this sequence (or a fresh one)"
            )
        if self.start is None:
            self.start = new.span.start
        self.stop = new.span.stop
        return HeldKeys(project(new.x, new.positions), new.span, new.mask)

    def store(self, state: tuple[Tensor, Tensor]) -> None:
        """The sums after this call's keys (new tensors; the old ones are left as they are)."""
        self.state = state

    def keep_newest(self, keep: int) -> None:
        """A sum cannot forget its oldest keys: refuse a sliding window that would need it."""
        if self.start is not None and self.stop - self.start > keep:
            raise ValueError(
                f"KV cache: a sliding window of {keep} positions past max_seq_len needs to drop "
                "the oldest keys, but linear attention keeps their sum; generate at most "
                "max_seq_len positions, or raise max_seq_len"
            )

    def select(self, index: Tensor) -> StateEntry:
        picked = None if self.state is None else (self.state[0][index], self.state[1][index])
        return StateEntry(picked, self.start, self.stop, self.chunk)


def find_state(entry: CacheEntry | None) -> StateEntry | None:
    """The :class:`StateEntry` in ``entry``'s chain of wrappers, or None (a context entry)."""
    while isinstance(entry, EntryWrapper):
        entry = entry.inner
    return entry if isinstance(entry, StateEntry) else None
