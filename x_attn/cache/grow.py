"""Append along one axis into a buffer that grows geometrically (no autograd).

A decode step then copies only the new rows instead of the whole cache. Caches are values (a
forward returns a new cache and leaves the one it was given intact), so several caches may
view prefixes of one buffer: only the one that wrote last may write after its prefix; any
other copies its rows into a buffer of its own, so no view handed out is ever overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(eq=False)
class GrowBuffer:
    """A preallocated tensor, how far along the growth axis it has been written, and the view
    of that prefix handed out last (the only one that may be continued in place)."""

    data: Tensor
    filled: int
    view: Tensor | None = None


def grow(
    buffer: GrowBuffer | None, old: Tensor, new: Tensor, dim: int
) -> tuple[Tensor, GrowBuffer]:
    """Write ``new`` after ``old`` (a prefix view of ``buffer`` or not) along ``dim``.

    Returns (view of the filled prefix, buffer). The buffer is (re)allocated with room to spare
    when ``old`` is not the view it handed out last (first append, after a slide or select, or
    a second continuation of one cache) or it is full.
    """
    n_old = old.shape[dim]
    n = n_old + new.shape[dim]
    reusable = (
        buffer is not None
        and buffer.view is old  # so old is data's prefix of `filled` rows, same layout
        and buffer.filled == n_old
        and buffer.data.shape[dim] >= n
    )
    if not reusable:
        shape = list(old.shape)
        shape[dim] = n + max(n, 64)
        buffer = GrowBuffer(old.new_empty(shape), n_old)
        buffer.data.narrow(dim, 0, n_old).copy_(old)
    buffer.data.narrow(dim, n_old, n - n_old).copy_(new)
    buffer.filled = n
    buffer.view = buffer.data.narrow(dim, 0, n)
    return buffer.view, buffer
