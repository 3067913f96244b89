"""Keys and values of one self-attention layer, appended call after call.

Shape legend: b batch, hk key heads, hv value heads, j cached keys, dh head dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from x_attn.cache.entry import CacheEntry, HeldKeys, KeyRows, Project
from x_attn.cache.grow import GrowBuffer, grow
from x_attn.masks.spec import Span


@dataclass
class KVEntry(CacheEntry):
    """Cached keys (b hk j dh), values (b hv j dh), their padding (b j) and first position.

    Without autograd (generation runs under ``inference_mode``) keys and values are written into
    buffers that grow geometrically, so a decode step copies only the new token's k/v instead of
    the whole cache; ``k`` and ``v`` are then views of the filled prefix. With autograd on, a
    plain concatenation keeps the graph intact. An entry owns its buffer: to branch a cache
    (beam search), use :meth:`KVCache.select`, which copies.

    Attributes:
        k, v: the keys and values held (after rotary rotation), or None while empty.
        mask: (b, j) padding of the keys held (True = real), or None when all are real.
        start: absolute position of the first key held.
    """

    k: Tensor | None = None
    v: Tensor | None = None
    mask: Tensor | None = None
    start: int | None = None
    _k_buffer: GrowBuffer | None = field(default=None, repr=False)
    _v_buffer: GrowBuffer | None = field(default=None, repr=False)
    _mask_buffer: GrowBuffer | None = field(default=None, repr=False)

    kind = "kv"

    @property
    def held(self) -> Span | None:
        if self.k is None or self.start is None:
            return None
        return Span(self.start, self.start + self.k.shape[-2])

    @property
    def key_mask(self) -> Tensor | None:
        return self.mask

    def next_position(self) -> int:
        return 0 if self.start is None else self.start + self.k.shape[-2]

    @property
    def batch(self) -> int | None:
        return None if self.k is None else self.k.shape[0]

    def update(self, new: KeyRows, project: Project) -> HeldKeys:
        """Project the new rows, append them after the held keys, return everything held."""
        self.check_continues(new, "KV cache")
        k, v = project(new.x, new.positions)
        self._append_mask(new.mask, k.shape[0], k.shape[-2])
        k, v = self.append(k, v)
        if self.start is None:
            self.start = new.span.start
        return HeldKeys((k, v), Span(self.start, self.start + k.shape[-2]), self.mask)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k/v after the cached ones and return the full keys and values."""
        if self.k is None:
            self.k, self.v = k, v
        elif torch.is_grad_enabled():
            self.k = torch.cat((self.k, k), dim=-2)
            self.v = torch.cat((self.v, v), dim=-2)
        else:
            self.k, self._k_buffer = grow(self._k_buffer, self.k, k, dim=-2)
            self.v, self._v_buffer = grow(self._v_buffer, self.v, v, dim=-2)
        return self.k, self.v

    def _append_mask(self, mask: Tensor | None, b: int, j: int) -> None:
        """Padding of the new keys after that of the held ones (None while all are real)."""
        if mask is None and self.mask is None:
            return
        held = 0 if self.k is None else self.k.shape[-2]
        device = self.k.device if self.k is not None else mask.device
        old = self.mask if self.mask is not None else torch.ones(b, held, dtype=torch.bool)
        new = mask if mask is not None else torch.ones(b, j, dtype=torch.bool, device=device)
        self.mask, self._mask_buffer = grow(self._mask_buffer, old.to(device), new, dim=-1)

    def select(self, index: Tensor) -> KVEntry:
        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index]

        return KVEntry(pick(self.k), pick(self.v), pick(self.mask), self.start)

    def keep_newest(self, keep: int) -> None:
        held = self.held
        drop = 0 if held is None else len(held) - max(keep, 0)
        if drop <= 0:
            return
        self.k, self.v = self.k[..., drop:, :], self.v[..., drop:, :]
        if self.mask is not None:
            self.mask = self.mask[:, drop:]
        self.start += drop

    def adopt(self, start: int, key_mask: Tensor | None) -> None:
        """Keys given as raw tensors hold the positions from ``start``; ``key_mask`` is their
        padding when it covers exactly those keys."""
        if self.start is not None or self.k is None:
            return
        self.start = start
        if self.mask is None and key_mask is not None and key_mask.shape[-1] == self.k.shape[-2]:
            self.mask = key_mask
