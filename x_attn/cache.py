"""Key/value cache objects for incremental decoding (DESIGN.md section 5).

A :class:`KVCache` holds one :class:`KVEntry` per attention layer (self and cross) of a stack,
the number of positions already processed and the key padding mask of those positions.
Self-attention entries store keys after rotary rotation; cross-attention entries store the
context's keys/values once.

Shape legend: b batch, hk key heads, h heads, j cached keys, dh head dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from x_attn.validation import cache_batch, check_batch_index


@dataclass
class KVEntry:
    """Cached keys (b hk j dh) and values (b h j dh) of one attention layer.

    Without autograd (generation runs under ``inference_mode``) keys and values are written into
    buffers that grow geometrically, so a decode step copies only the new token's k/v instead of
    the whole cache; ``k`` and ``v`` are then views of the filled prefix. With autograd on, a
    plain concatenation keeps the graph intact. An entry owns its buffer: to branch a cache
    (beam search), use :meth:`KVCache.select`, which copies.
    """

    k: Tensor | None = None
    v: Tensor | None = None
    _k_buffer: Tensor | None = field(default=None, repr=False)
    _v_buffer: Tensor | None = field(default=None, repr=False)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k/v after the cached ones and return the full keys and values."""
        if self.k is None:
            self.k, self.v = k, v
        elif torch.is_grad_enabled():
            self.k = torch.cat((self.k, k), dim=-2)
            self.v = torch.cat((self.v, v), dim=-2)
        else:
            self.k, self._k_buffer = _write_after(self._k_buffer, self.k, k)
            self.v, self._v_buffer = _write_after(self._v_buffer, self.v, v)
        return self.k, self.v


def _write_after(buffer: Tensor | None, old: Tensor, new: Tensor) -> tuple[Tensor, Tensor]:
    """Write ``new`` after ``old`` (a prefix view of ``buffer`` or not) along the key axis.

    Returns (view of the filled prefix, buffer). The buffer is (re)allocated with room to spare
    when ``old`` is not its prefix (first append, after a slide or select) or it is full.
    """
    n_old, n = old.shape[-2], old.shape[-2] + new.shape[-2]
    reusable = (
        buffer is not None
        and buffer.shape[-2] >= n
        and buffer.shape[:-2] == old.shape[:-2]
        and buffer.dtype == old.dtype
        and buffer.data_ptr() == old.data_ptr()
        and buffer.stride() == old.stride()
    )
    if not reusable:
        buffer = old.new_empty(*old.shape[:-2], n + max(n, 64), old.shape[-1])
        buffer[..., :n_old, :] = old
    buffer[..., n_old:n, :] = new
    return buffer[..., :n, :], buffer


@dataclass
class KVCache:
    """The cache of a whole stack.

    Attributes:
        entries: one entry per attention layer, in layer order.
        length: positions already processed (keys carrying a position), counted from 0; the
            next token sits at absolute position ``length``.
        key_mask: (b, kept) padding mask of the positions still held, or None if all valid.
        dropped: oldest positions evicted from the self-attention entries by :meth:`slide`.
    """

    entries: list[KVEntry] = field(default_factory=list)
    length: int = 0
    key_mask: Tensor | None = None
    dropped: int = 0

    @property
    def kept(self) -> int:
        """Positions whose keys/values are still held (``length - dropped``)."""
        return self.length - self.dropped

    @classmethod
    def empty(cls, num_layers: int) -> KVCache:
        return cls(entries=[KVEntry() for _ in range(num_layers)])

    def select(self, index: Tensor) -> KVCache:
        """A cache restricted to the batch rows in ``index`` (for beam or batch pruning)."""
        check_batch_index(index, cache_batch(self), "KVCache.select")
        entries = [
            KVEntry(None if e.k is None else e.k[index], None if e.v is None else e.v[index])
            for e in self.entries
        ]
        mask = None if self.key_mask is None else self.key_mask[index]
        return KVCache(entries=entries, length=self.length, key_mask=mask, dropped=self.dropped)

    def slide(self, keep: int, layers: Sequence[int]) -> None:
        """Keep only the newest ``keep`` positions in the self-attention entries ``layers``.

        Absolute positions are unchanged (``length`` still counts every processed token), so
        the next query is positioned correctly; it just sees fewer keys (a sliding window).
        Cross-attention entries (context keys, no positions) must not be listed.
        """
        drop = self.kept - max(keep, 0)
        if drop <= 0:
            return
        for index in layers:
            entry = self.entries[index]
            if entry.k is not None:
                entry.k, entry.v = entry.k[..., drop:, :], entry.v[..., drop:, :]
        if self.key_mask is not None:
            self.key_mask = self.key_mask[:, drop:]
        self.dropped += drop
