"""xPos: rotary embeddings with an exponential decay of the scores over distance.

A Length-Extrapolatable Transformer (Sun et al., arXiv 2212.10554). Pair ``i`` of the rotary
dims gets ``zeta_i = (2i / r + gamma) / (1 + gamma)`` with ``gamma = 0.4``; a query at position
``p`` is multiplied by ``zeta_i ** (p / scale_base)``, a key at position ``p`` divided by it, so
the score of query ``m`` and key ``n`` carries ``zeta_i ** ((m - n) / scale_base)``: a decay
for past keys (``m > n``), a growth for future ones. It is therefore defined for causal
attention only.

Positions are not re-centred (x-transformers centres them on the middle of each forward, which a
KV cache cannot follow: cached keys would keep an old centre). The magnitudes therefore grow with
the absolute position, and :func:`xpos_max_position` says how far a dtype can go.

Shape legend: n sequence, r rotary dim, f = r/2 pairs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

GAMMA = 0.4  # the paper's gamma: zeta_i = (2i / r + gamma) / (1 + gamma)
_HEADROOM = math.log(16.0)  # room left for |q|, |k| up to 16 before the dtype's limits


def xpos_decay(dim: int, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """(r/2,) per-pair decay rates ``zeta_i = (2i / r + 0.4) / 1.4`` in (0, 1)."""
    two_i = torch.arange(0, dim, 2, dtype=dtype, device=device)
    return (two_i / dim + GAMMA) / (1 + GAMMA)


def xpos_scale(positions: Tensor, dim: int, scale_base: float) -> Tensor:
    """(..., n, r/2) query factors ``zeta_i ** (p / scale_base)``; keys use the reciprocal.

    Args:
        positions: (..., n) positions in a floating dtype (float64 for exact tables).
        dim: rotary dim r.
        scale_base: the paper's scale base (512).
    """
    zeta = xpos_decay(dim, positions.dtype, positions.device)
    return zeta ** (positions.unsqueeze(-1) / scale_base)


def xpos_max_position(dim: int, scale_base: float, dtype: torch.dtype) -> int:
    """The largest |position| whose xPos factors stay inside ``dtype``'s normal range.

    Key factors grow as ``zeta_0 ** (-p / scale_base)`` (zeta_0 = 0.4 / 1.4, the fastest pair),
    query factors shrink as its inverse. Past this position keys would overflow or queries fall
    into subnormals (float16: about 2900 positions for scale_base 512; float32 / bfloat16:
    about 33000).
    """
    del dim  # the fastest pair, i = 0, does not depend on r
    info = torch.finfo(dtype)
    room = min(math.log(info.max), -math.log(info.tiny)) - _HEADROOM
    rate = -math.log(GAMMA / (1 + GAMMA))
    return int(room / rate * scale_base)
