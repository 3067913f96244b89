"""Entries that append the projected rows of every call: the shared bookkeeping.

A subclass is a dataclass that names the tensors it stores in ``stored`` (each with the key axis
at -2, e.g. keys (b, hk, j, dh) or a latent (b, 1, j, dc)) and declares them as fields, plus
``mask`` (b, j), ``start`` and a ``_<name>_buffer`` field per stored tensor. The projection's
payload is the stored tensors (a tuple when there are several, the tensor itself when one).

Without autograd (generation runs under ``inference_mode``) the tensors are written into
buffers that grow geometrically, so a decode step copies only the new rows instead of the whole
cache; the stored tensors are then views of the filled prefix. With autograd on, a plain
concatenation keeps the graph intact. A fork shares its buffers until it appends: only the
entry that wrote last may write after its prefix, any other copies (see
:mod:`x_attn.cache.grow`), so every update rebinds fields and the forked entry stays intact.

Shape legend: b batch, j keys held.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from x_attn.cache.entry import CacheEntry, HeldKeys, KeyRows, Project
from x_attn.cache.grow import GrowBuffer, grow
from x_attn.masks.spec import Span


class AppendedRows(CacheEntry):
    """Appends each call's projected rows; knows their first position and their padding."""

    stored: ClassVar[tuple[str, ...]] = ()
    mask: Tensor | None
    start: int | None
    _mask_buffer: GrowBuffer | None

    def _tensors(self) -> tuple[Tensor | None, ...]:
        return tuple(getattr(self, name) for name in self.stored)

    def _first(self) -> Tensor | None:
        return getattr(self, self.stored[0])

    def _rows(self) -> int:
        first = self._first()
        return 0 if first is None else first.shape[-2]

    @property
    def held(self) -> Span | None:
        if self._first() is None or self.start is None:
            return None
        return Span(self.start, self.start + self._rows())

    @property
    def key_mask(self) -> Tensor | None:
        return self.mask

    def next_position(self) -> int:
        return 0 if self.start is None else self.start + self._rows()

    @property
    def batch(self) -> int | None:
        first = self._first()
        return None if first is None else first.shape[0]

    def update(self, new: KeyRows, project: Project) -> HeldKeys:
        """Project the new rows, append them after the held ones, return everything held."""
        self.check_continues(new, "KV cache")
        payload = project(new.x, new.positions)
        parts = payload if isinstance(payload, tuple) else (payload,)
        self._append_mask(new.mask, parts[0].shape[0], parts[0].shape[-2])
        held = self.append(*parts)
        if self.start is None:
            self.start = new.span.start
        span = Span(self.start, self.start + self._rows())
        return HeldKeys(held if isinstance(payload, tuple) else held[0], span, self.mask)

    def append(self, *parts: Tensor) -> tuple[Tensor, ...]:
        """Store ``parts`` (one per stored tensor) after the held rows; return all held."""
        for name, part in zip(self.stored, parts, strict=True):
            old = getattr(self, name)
            if old is None:
                setattr(self, name, part)
            elif torch.is_grad_enabled():
                setattr(self, name, torch.cat((old, part), dim=-2))
            else:
                buffer = f"_{name}_buffer"
                held, grown = grow(getattr(self, buffer), old, part, dim=-2)
                setattr(self, name, held)
                setattr(self, buffer, grown)
        return self._tensors()

    def _append_mask(self, mask: Tensor | None, b: int, j: int) -> None:
        """Padding of the new keys after that of the held ones (None while all are real)."""
        if mask is None and self.mask is None:
            return
        first = self._first()
        held = self._rows()
        device = first.device if first is not None else mask.device
        old = self.mask if self.mask is not None else torch.ones(b, held, dtype=torch.bool)
        new = mask if mask is not None else torch.ones(b, j, dtype=torch.bool, device=device)
        self.mask, self._mask_buffer = grow(self._mask_buffer, old.to(device), new, dim=-1)

    def _copy(self, **changes: Any) -> AppendedRows:
        fields = {name: getattr(self, name) for name in (*self.stored, "mask", "start")}
        return type(self)(**{**fields, **changes})

    def select(self, index: Tensor) -> AppendedRows:
        picked = {name: t[index] for name, t in zip(self.stored, self._tensors()) if t is not None}
        mask = None if self.mask is None else self.mask[index]
        return self._copy(**picked, mask=mask)

    def keep_newest(self, keep: int) -> None:
        held = self.held
        drop = 0 if held is None else len(held) - max(keep, 0)
        if drop <= 0:
            return
        for name, t in zip(self.stored, self._tensors()):
            setattr(self, name, t[..., drop:, :])
        if self.mask is not None:
            self.mask = self.mask[:, drop:]
        self.start += drop

    def adopt(self, start: int, key_mask: Tensor | None) -> None:
        """Rows given as raw tensors hold the positions from ``start``; ``key_mask`` is their
        padding when it covers exactly those rows."""
        if self.start is not None or self._first() is None:
            return
        self.start = start
        if self.mask is None and key_mask is not None and key_mask.shape[-1] == self._rows():
            self.mask = key_mask
