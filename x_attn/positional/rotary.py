"""Rotary position embedding (RoPE).

RoFormer: Enhanced Transformer with Rotary Position Embedding (Su et al., arXiv 2104.09864),
with Position Interpolation (Chen et al., arXiv 2306.15595) as ``interpolation_factor``.

Layout: half-split ("rotate_half"); dimension ``i`` is paired with ``i + r/2`` for
``i < r/2``, where ``r`` is the rotary dim. Only the first ``r`` dims of the last axis are
rotated; the rest pass through untouched.

Precision: angles ``position * theta_i`` are always computed in float64 from freshly computed
frequencies (no floating buffer that ``model.half()`` could degrade), then cast.

Shape legend: n sequence, r rotary dim, d head dim (d >= r), ... any leading dims (b, h).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from x_attn.utils import check_positive_int

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _angle_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device supports it (MPS has no float64), else float32."""
    return torch.float32 if device.type == "mps" else torch.float64


class RotaryEmbedding(nn.Module):
    """Produces RoPE angles ``p / f * theta_i`` with ``theta_i = base ** (-2i / r)``.

    Args:
        dim: rotary dim ``r`` (even, >= 2). May be smaller than the head dim (partial rotary).
        base: frequency base (10000 in RoFormer).
        interpolation_factor: Position Interpolation factor ``f >= 1``; positions are divided
            by ``f`` (``1.0`` is plain RoPE).
    """

    def __init__(self, dim: int, base: float = 10000.0, interpolation_factor: float = 1.0) -> None:
        super().__init__()
        owner = "RotaryEmbedding"
        check_positive_int("dim", dim, owner)
        if dim % 2 != 0:
            raise ValueError(
                f"{owner}: 'dim' (rotary dim) must be even because dims are rotated in pairs, "
                f"got {dim}; use {dim - 1} or {dim + 1}"
            )
        if isinstance(base, bool) or not isinstance(base, (int, float)):
            raise TypeError(f"{owner}: 'base' must be a float, got {type(base).__name__}")
        if not base > 1.0:
            raise ValueError(f"{owner}: 'base' must be > 1 (10000 is the paper value), got {base}")
        if isinstance(interpolation_factor, bool) or not isinstance(
            interpolation_factor, (int, float)
        ):
            raise TypeError(
                f"{owner}: 'interpolation_factor' must be a float, "
                f"got {type(interpolation_factor).__name__}"
            )
        if not interpolation_factor >= 1.0:
            raise ValueError(
                f"{owner}: 'interpolation_factor' must be >= 1 (positions are divided by it; "
                f"1.0 disables interpolation), got {interpolation_factor}"
            )
        self.dim = dim
        self.base = float(base)
        self.interpolation_factor = float(interpolation_factor)

    def frequencies(self, device: torch.device | str | None = None) -> Tensor:
        """Frequencies ``theta_i = base ** (-2i / r)``, ``(r // 2,)``, float64 (float32 on MPS).

        Interpolation is not folded in: it acts on positions in :meth:`forward`.
        """
        device = torch.device(device) if device is not None else torch.device("cpu")
        exponent = torch.arange(0, self.dim, 2, dtype=_angle_dtype(device), device=device)
        return self.base ** (-exponent / self.dim)

    def forward(self, positions: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Rotation angles for absolute positions.

        Args:
            positions: ``(n,)`` absolute token positions (integer or float); with a KV cache
                these are ``p0 + arange(n)``. Extra leading dims are allowed and kept.
            dtype: dtype of the returned angles (float32 by default; float64 for exact tests).

        Returns:
            ``(n, r // 2)`` angles ``positions / interpolation_factor * theta``, computed in
            float64 and cast to ``dtype``.
        """
        if not isinstance(positions, Tensor):
            raise TypeError(
                f"RotaryEmbedding: 'positions' must be a Tensor, got {type(positions).__name__}"
            )
        if positions.is_complex() or positions.dtype == torch.bool:
            raise TypeError(
                "RotaryEmbedding: 'positions' must be an integer or real float tensor, "
                f"got {positions.dtype}"
            )
        inv_freq = self.frequencies(positions.device)
        pos = positions.to(inv_freq.dtype) / self.interpolation_factor
        angles = pos.unsqueeze(-1) * inv_freq
        return angles.to(dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base}, interpolation_factor={self.interpolation_factor}"


def apply_rotary(t: Tensor, angles: Tensor) -> Tensor:
    """Rotate the first ``r = 2 * angles.shape[-1]`` dims of ``t`` (half-split layout).

    Pair ``(t[..., i], t[..., i + r/2])`` at angle ``a_i`` becomes
    ``(t_i cos a_i - t_{i+r/2} sin a_i, t_i sin a_i + t_{i+r/2} cos a_i)``.

    Args:
        t: ``(..., n, d)`` queries or keys, ``d >= r``.
        angles: ``(n, r/2)`` from :class:`RotaryEmbedding` (anything broadcastable to
            ``(..., n, r/2)`` works, e.g. ``(b, 1, n, r/2)`` for per-sample positions).

    Returns:
        ``(..., n, d)`` tensor in ``t.dtype``; dims ``r:`` are bit-identical to the input.
        The rotation is computed in float32 when ``t`` is float16/bfloat16, else in ``t.dtype``.
    """
    if not t.is_floating_point():
        raise TypeError(f"apply_rotary: 't' must be a floating tensor, got {t.dtype}")
    if angles.ndim < 1:
        raise ValueError("apply_rotary: 'angles' must have shape (n, r/2), got a scalar")
    half = angles.shape[-1]
    r = 2 * half
    if t.ndim < 2 or t.shape[-1] < r:
        raise ValueError(
            f"apply_rotary: rotary dim r = 2 * angles.shape[-1] = {r} exceeds the last dim of "
            f"'t' (shape {tuple(t.shape)}); use a RotaryEmbedding dim <= the head dim"
        )
    if angles.ndim >= 2 and angles.shape[-2] not in (1, t.shape[-2]):
        raise ValueError(
            f"apply_rotary: 'angles' has {angles.shape[-2]} positions but 't' has "
            f"{t.shape[-2]} tokens; pass one position per token (p0 + arange(n) with a cache)"
        )
    compute = torch.float32 if t.dtype in _LOW_PRECISION else t.dtype
    if angles.dtype in _LOW_PRECISION:
        angles = angles.float()
    cos = angles.cos().to(compute)
    sin = angles.sin().to(compute)
    x1 = t[..., :half].to(compute)
    x2 = t[..., half:r].to(compute)
    rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(t.dtype)
    if r == t.shape[-1]:
        return rotated
    return torch.cat((rotated, t[..., r:]), dim=-1)
