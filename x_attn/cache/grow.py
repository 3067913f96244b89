"""Append along one axis into a buffer that grows geometrically (no autograd).

A decode step then copies only the new rows instead of the whole cache.
"""

from __future__ import annotations

from torch import Tensor


def grow(buffer: Tensor | None, old: Tensor, new: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Write ``new`` after ``old`` (a prefix view of ``buffer`` or not) along ``dim``.

    Returns (view of the filled prefix, buffer). The buffer is (re)allocated with room to spare
    when ``old`` is not its prefix (first append, after a slide or select) or it is full.
    """
    n_old = old.shape[dim]
    n = n_old + new.shape[dim]
    d = dim % old.ndim
    reusable = (
        buffer is not None
        and buffer.shape[dim] >= n
        and buffer.shape[:d] == old.shape[:d]
        and buffer.shape[d + 1 :] == old.shape[d + 1 :]
        and buffer.dtype == old.dtype
        and buffer.data_ptr() == old.data_ptr()
        and buffer.stride() == old.stride()
    )
    if not reusable:
        shape = list(old.shape)
        shape[dim] = n + max(n, 64)
        buffer = old.new_empty(shape)
        buffer.narrow(dim, 0, n_old).copy_(old)
    buffer.narrow(dim, n_old, n - n_old).copy_(new)
    return buffer.narrow(dim, 0, n), buffer
