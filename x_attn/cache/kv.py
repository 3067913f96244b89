"""Keys and values of one self-attention layer, appended call after call.

Shape legend: b batch, hk key heads, hv value heads, j cached keys, dh head dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from x_attn.cache.grow import GrowBuffer
from x_attn.cache.rows import AppendedRows


@dataclass
class KVEntry(AppendedRows):
    """Cached keys (b hk j dh), values (b hv j dh), their padding (b j) and first position.

    Keys and values are appended as :class:`x_attn.cache.rows.AppendedRows` describes (growing
    buffers without autograd, so a decode step copies only the new token's k/v).

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
    stored = ("k", "v")
