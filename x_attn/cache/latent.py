"""The cache entry of multi-head latent attention (DeepSeek-V2, arXiv 2405.04434).

It holds one tensor per layer: each token's key/value latent followed by its rotated rotary
keys, (b, 1, j, d_c + s * d_R), nothing per head. Per token and layer that is d_c + s * d_R
numbers, against 2 * heads * dim_head for multi-head attention (the paper's comparison table).

Shape legend: b batch, j positions held, w = d_c + s * d_R cached width.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from x_attn.cache.grow import GrowBuffer
from x_attn.cache.rows import AppendedRows


@dataclass
class LatentEntry(AppendedRows):
    """Cached latents and rotary keys (b, 1, j, w), their padding (b, j) and first position.

    Appended as :class:`x_attn.cache.rows.AppendedRows` describes; the layer's
    :class:`x_attn.attention.projections.latent.LatentProjection` reads it (materialised or
    absorbed).

    Attributes:
        latent: [c ; k_R] of every position held, or None while empty.
        mask: (b, j) padding of the positions held (True = real), or None when all are real.
        start: absolute position of the first one held.
    """

    latent: Tensor | None = None
    mask: Tensor | None = None
    start: int | None = None
    _latent_buffer: GrowBuffer | None = field(default=None, repr=False)
    _mask_buffer: GrowBuffer | None = field(default=None, repr=False)

    kind = "latent"
    stored = ("latent",)
