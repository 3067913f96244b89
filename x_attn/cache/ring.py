"""The cache of a sliding-window layer: the last keys its window can reach, plus global tokens.

A query at position t sees keys down to ``t - (w - 1) d`` (:mod:`x_attn.masks.window`), so
after a call ending at position t the next query needs the keys from ``t + 1 - (w - 1) d`` on:
the entry keeps exactly those ``(w - 1) d`` newest keys (a bounded buffer: memory and per-token
cost do not grow with the generated length), and the keys of the global tokens given at
construction, which every later query sees (kept in front, "pinned"). A prefill longer than
the window attends with the blockwise kernel and then keeps only its tail. Until the last
global position has been processed every key is kept (a global query sees all keys before it).

Shape legend: b batch, hk key heads, hv value heads, j keys held, dh head dim.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from x_attn.cache.entry import CacheEntry, HeldKeys, KeyRows, Project
from x_attn.masks.spec import Span


class RingEntry(CacheEntry):
    """Keys/values of the last ``reach`` positions and of the global ``positions`` before them.

    Args:
        reach: how many past keys the next query can see ((w - 1) d).
        positions: absolute positions of the global tokens (sorted).
    """

    kind = "ring"

    def __init__(self, reach: int, positions: tuple[int, ...] = ()) -> None:
        self.reach, self.positions = reach, tuple(sorted(positions))
        self.k: Tensor | None = None  # (b, hk, j, dh): pinned keys, then the span
        self.v: Tensor | None = None
        self.mask: Tensor | None = None  # (b, j) padding of every key held
        self.start: int | None = None  # first position of the contiguous span
        self.pinned: tuple[int, ...] = ()

    @property
    def held(self) -> Span | None:
        if self.k is None or self.start is None:
            return None
        return Span(self.start, self.start + self.k.shape[-2] - len(self.pinned))

    @property
    def oldest(self) -> int | None:
        held = self.held
        if held is None:
            return None
        return self.pinned[0] if self.pinned else held.start

    @property
    def key_mask(self) -> Tensor | None:
        return self.mask

    @property
    def batch(self) -> int | None:
        return None if self.k is None else self.k.shape[0]

    def update(self, new: KeyRows, project: Project) -> HeldKeys:
        """Project the new rows, return them after the held keys, then keep the reachable tail."""
        self.check_continues(new, "sliding-window cache")
        k, v = project(new.x, new.positions)
        mask = self._joined_mask(new.mask, k.shape[0], k.shape[-2], k.device)
        if self.k is not None:
            k, v = torch.cat((self.k, k), dim=-2), torch.cat((self.v, v), dim=-2)
        if self.start is None:
            self.start = new.span.start
        self.k, self.v, self.mask = k, v, mask
        held = HeldKeys((k, v), Span(self.start, new.span.stop), mask, self.pinned)
        self._trim()
        return held

    def _joined_mask(self, new: Tensor | None, b: int, j: int, device) -> Tensor | None:
        if new is None and self.mask is None:
            return None
        old = 0 if self.k is None else self.k.shape[-2]
        held = self.mask if self.mask is not None else torch.ones(b, old, dtype=torch.bool)
        new = new if new is not None else torch.ones(b, j, dtype=torch.bool)
        return torch.cat((held.to(device), new.to(device)), dim=-1)

    def _trim(self) -> None:
        """Keep the ``reach`` newest keys of the span (every key until the last global position
        is processed) and pin the global tokens among the dropped ones."""
        held = self.held
        if self.positions and held.stop <= self.positions[-1]:
            return
        drop = len(held) - self.reach
        if drop <= 0:
            return
        pin = tuple(p for p in self.positions if held.start <= p < held.start + drop)
        first = len(self.pinned)
        index = [*range(first), *(first + p - held.start for p in pin)]
        self._keep([*index, *range(first + drop, self.k.shape[-2])], self.pinned + pin)
        self.start = held.start + drop

    def keep_newest(self, keep: int) -> None:
        """Drop every key (global ones too) older than the newest ``keep`` positions."""
        held = self.held
        if held is None:
            return
        cut = held.stop - max(keep, 0)
        pinned = tuple(p for p in self.pinned if p >= cut)
        drop = max(cut - held.start, 0)
        first = len(self.pinned)
        index = [*range(first - len(pinned), first), *range(first + drop, self.k.shape[-2])]
        self._keep(index, pinned)
        self.start = held.start + min(drop, len(held))

    def _keep(self, index: list[int], pinned: tuple[int, ...]) -> None:
        """Keep the held keys at ``index`` (in order); ``pinned`` are the kept global ones."""
        self.pinned = pinned
        if len(index) == self.k.shape[-2]:
            return
        rows = torch.tensor(index, dtype=torch.long, device=self.k.device)
        self.k, self.v = self.k.index_select(-2, rows), self.v.index_select(-2, rows)
        if self.mask is not None:
            self.mask = self.mask.index_select(-1, rows.to(self.mask.device))

    def select(self, index: Tensor) -> RingEntry:
        other = copy.copy(self)  # fields are only ever rebound, never written into
        if self.k is not None:
            other.k, other.v = self.k[index], self.v[index]
            other.mask = None if self.mask is None else self.mask[index]
        return other
