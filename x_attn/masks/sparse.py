"""Sparse Transformer patterns (Child et al., arXiv 1904.10509): strided and fixed, merged.

Each rule is the union of the paper's two patterns A(1) and A(2) for one head ("merged"
integration: one softmax over both sets), over absolute positions i (query) and j (key):

* strided, stride l: ``|i - j| <= l`` or ``(i - j) mod l = 0`` (the previous l positions
  and every l-th one before them);
* fixed, block l, summary c: ``j // l = i // l`` or ``j mod l >= l - c`` (the own block and
  the last c "summary" positions of every block).

Causality is not part of the rule: a causal layer adds :class:`x_attn.masks.causal.Causal`,
and the intersection is exactly the paper's ``j <= i`` pattern. Without it both patterns are
symmetric extensions (strided looks l positions both ways and along its residue class both
ways; fixed sees its whole block and every block's summary), as the maths allows.

Besides :meth:`allows` (the dense mask of the reference), each rule cuts the (query, key)
pairs it allows into :class:`Group` s for the block-sparse kernel
(:mod:`x_attn.kernels.block_sparse`): a group is a set of query positions, the key
positions they need, and optionally which of those pairs belong to this group; every allowed
pair lies in exactly one group of exactly one part, and each part covers each query at most
once. Strided has two parts (the band of the previous l positions, computed in query blocks
of l, and the residue classes mod l, computed as columns of the (n / l, l) grid); fixed has
one (each query block with its own block and the summary keys).

Shape legend: r rows (queries) of a group, c columns (keys) of a group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from x_attn.masks.spec import MaskRule, Span


@dataclass(frozen=True)
class Group:
    """Query positions ``rows`` (r,), key positions ``cols`` (c,), and ``keep`` (r, c) bool:
    which of these pairs this group computes (None = every pair the mask allows)."""

    rows: Tensor
    cols: Tensor
    keep: Tensor | None = None


class BlockPattern(MaskRule):
    """A pattern the block-sparse kernel computes from :meth:`parts` (kind "block_sparse")."""

    kind: ClassVar[str] = "block_sparse"

    def parts(self, q: Span, k: Span, causal: bool) -> list[list[Group]]:
        """Groups covering every pair the rule (and causality, when ``causal``) allows among
        queries ``q`` and keys ``k``; one list per part, each query at most once per part."""
        raise NotImplementedError


def _range(lo: int, hi: int, step: int = 1) -> Tensor:
    return torch.arange(lo, max(lo, hi), step)


class Strided(BlockPattern):
    """Strided pattern with stride ``l``: ``|i - j| <= l`` or ``(i - j) mod l = 0``."""

    def __init__(self, stride: int) -> None:
        self.stride = stride

    def allows(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        dist = q_pos - k_pos
        return (dist.abs() <= self.stride) | (dist % self.stride == 0)

    def hides_nothing(self, q: Span, k: Span) -> bool:
        if len(q) == 0 or len(k) == 0 or self.stride == 1:
            return True
        return max(q.stop - 1 - k.start, k.stop - 1 - q.start) <= self.stride

    def parts(self, q: Span, k: Span, causal: bool) -> list[list[Group]]:
        l = self.stride
        band = []  # query blocks of l rows: keys up to l back (and ahead), no residue pair
        for start in range(q.start, q.stop, l):  # (a block of l sees distances < 2l only)
            stop = min(start + l, q.stop)
            hi = stop if causal else stop + l
            cols = _range(max(k.start, start - l), min(k.stop, hi))
            band.append(Group(_range(start, stop), cols))
        columns = []  # residue classes: distances that are multiples of l beyond the band
        for first in range(q.start, min(q.start + l, q.stop)):
            rows = _range(first, q.stop, l)
            last = first + (q.stop - 1 - first) // l * l  # rows[-1], from ints (compiles)
            hi = last - 2 * l + 1 if causal else k.stop
            cols = _range(k.start + (first - k.start) % l, min(k.stop, hi), l)
            if len(cols):
                keep = (rows.unsqueeze(-1) - cols).abs() > l
                columns.append(Group(rows, cols, keep))
        return [band, columns]


class Fixed(BlockPattern):
    """Fixed pattern, block ``l``, summary ``c``: ``j // l = i // l`` or ``j mod l >= l - c``."""

    slot_anchored: ClassVar[bool] = True

    def __init__(self, block: int, summary: int) -> None:
        self.block, self.summary = block, summary

    def allows(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        l = self.block
        return (q_pos // l == k_pos // l) | (k_pos % l >= l - self.summary)

    def hides_nothing(self, q: Span, k: Span) -> bool:
        if len(q) == 0 or len(k) == 0 or self.summary >= self.block:
            return True
        first, last = min(q.start, k.start), max(q.stop, k.stop) - 1
        return first // self.block == last // self.block  # one block: all of it is seen

    def parts(self, q: Span, k: Span, causal: bool) -> list[list[Group]]:
        l = self.block
        keys = k.arange()
        summary = keys[keys % l >= l - self.summary]
        groups = []
        for block in range(q.start // l, (q.stop - 1) // l + 1):
            lo, hi = block * l, (block + 1) * l  # the own block's positions
            start, stop = max(q.start, lo), min(q.stop, hi)
            own = _range(max(k.start, lo), min(k.stop, stop if causal else hi))
            before = summary[summary < lo]
            after = summary[summary >= hi] if not causal else summary[:0]
            groups.append(Group(_range(start, stop), torch.cat((before, own, after))))
        return [groups]
