"""Rotary position embedding (RoPE).

RoFormer: Enhanced Transformer with Rotary Position Embedding (Su et al., arXiv 2104.09864),
with Position Interpolation (Chen et al., arXiv 2306.15595) as ``interpolation_factor``.
Frequency rescaling (NTK-aware base, YaRN, Llama 3) is in :mod:`rotary_scaling`, the xPos
magnitudes in :mod:`xpos`; this file turns frequencies into tables and rotates.

Layouts: half-split ("rotate_half", the default; GPT-NeoX, Hugging Face Llama) pairs dimension
``i`` with ``i + r/2``; interleaved (``interleaved=True``; RoFormer, GPT-J, Meta's Llama code,
x-transformers) pairs ``2i`` with ``2i + 1``. Both rotate pair ``i`` by ``p * theta_i``; they
differ by a fixed permutation of the head dims. Only the first ``r`` dims of the last axis are
rotated; the rest pass through untouched (partial rotary).

Precision: angles ``position * theta_i`` and their cosines and sines are computed in float64
from freshly computed frequencies (no floating buffer that ``model.half()`` could degrade), then
cast; float32 angles would carry a phase error of ~5e-4 rad at position 8192.

Reuse: the positions ``start ... stop - 1`` of a forward without custom positions or padding
come from one table of positions ``0 ... L - 1`` kept by the embedding for the longest run seen
(:meth:`RotaryEmbedding.slot_table`), so a decode step slices two rows instead of rebuilding
its tables; being elementwise, a row of the kept table equals the row computed alone. Such a
table also keeps the full-width form of the half-split layout (:attr:`RotaryTable.wide`), with
which a rotation is ``t * cos + roll(t) * sin`` (four tensor ops).

Shape legend: n sequence, r rotary dim, f = r/2 frequencies, d head dim (d >= r), ... any
leading dims (b, h).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from einops import rearrange
from torch import Tensor, nn

from x_attn.positional.rotary_scaling import FrequencyScaling, ntk_base
from x_attn.positional.xpos import xpos_scale
from x_attn.utils import check_positive_int

_LOW_PRECISION = (torch.float16, torch.bfloat16)
# the longest table of positions 0 ... L - 1 an embedding keeps (slot_table); beyond, per call
KEEP_MAX_POSITIONS = 1 << 15


def _angle_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device supports it (MPS has no float64), else float32."""
    return torch.float32 if device.type == "mps" else torch.float64


def _check_number(name: str, value: object, owner: str, low: float, strict: bool) -> float:
    """``value`` as a float; TypeError unless a number, ValueError unless above ``low``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: '{name}' must be a float, got {type(value).__name__}")
    if not (value > low if strict else value >= low):
        raise ValueError(f"{owner}: '{name}' must be {'>' if strict else '>='} {low}, got {value}")
    return float(value)


@dataclass(frozen=True)
class RotaryTable:
    """cos / sin of the rotation angles of some positions, and the magnitudes of their pairs.

    Attributes:
        cos: (..., n, f) cosines (leading dim b for per-sample positions).
        sin: (..., n, f) sines.
        q_scale: (..., n, f) factor on each rotated query pair (xPos growth, YaRN temperature),
            or None.
        k_scale: the same for keys (xPos: the reciprocal of the query factor), or None.
        interleaved: pairs (2i, 2i + 1) instead of (i, i + r/2).
        wide: (cat(cos, cos), cat(-sin, sin)), each (..., n, r), of a half-split table without
            magnitudes, or None: :meth:`rotate` then rotates a head of exactly r dims as
            ``t * cos + roll(t, r/2) * sin``, the same numbers as :func:`rotate_pairs`
            (``a cos - b sin`` is ``a cos + b (-sin)`` exactly in IEEE arithmetic).
    """

    cos: Tensor
    sin: Tensor
    q_scale: Tensor | None = None
    k_scale: Tensor | None = None
    interleaved: bool = False
    wide: tuple[Tensor, Tensor] | None = None

    @classmethod
    def from_angles(cls, angles: Tensor, interleaved: bool = False) -> RotaryTable:
        """A table from (..., n, f) angles (cos / sin taken in at least float32)."""
        wide = angles.double() if angles.device.type != "mps" else angles.float()
        cos, sin = wide.cos().to(angles.dtype), wide.sin().to(angles.dtype)
        return cls(cos, sin, None, None, interleaved)

    def with_wide(self) -> RotaryTable:
        """This table with its full-width form (:attr:`wide`) where the layout has one."""
        if self.interleaved or self.q_scale is not None or self.k_scale is not None:
            return self
        wide = (torch.cat((self.cos, self.cos), dim=-1), torch.cat((-self.sin, self.sin), dim=-1))
        return replace(self, wide=wide)

    def rows(self, start: int, stop: int) -> RotaryTable:
        """The table of rows ``start ... stop - 1`` (along the position axis)."""
        if start == 0 and stop == self.cos.shape[-2]:
            return self

        def cut(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[..., start:stop, :]

        wide = None if self.wide is None else (cut(self.wide[0]), cut(self.wide[1]))
        return RotaryTable(
            cut(self.cos),
            cut(self.sin),
            cut(self.q_scale),
            cut(self.k_scale),
            self.interleaved,
            wide,
        )

    def rotate(self, t: Tensor, key: bool = False) -> Tensor:
        """Rotate (b, h, n, d) or (..., n, d) queries (or keys, ``key=True``) at these rows."""
        wide = self.wide
        if (
            wide is not None
            and t.dtype == wide[0].dtype
            and t.shape[-1] == wide[0].shape[-1]
            and t.shape[-2] == wide[0].shape[-2]
            and wide[0].ndim == 2
        ):  # a head of exactly r dims in the table's dtype, rows shared by the batch
            cos, sin = wide
            return t * cos + t.roll(cos.shape[-1] // 2, -1) * sin
        scale = self.k_scale if key else self.q_scale
        return rotate_pairs(t, self.cos, self.sin, scale, self.interleaved)


class RotaryEmbedding(nn.Module):
    """RoPE frequencies and tables: angle ``p / f * theta_i``, ``theta_i = base ** (-2i / r)``.

    Args:
        dim: rotary dim ``r`` (even, >= 2). May be smaller than the head dim (partial rotary).
        base: frequency base (10000 in RoFormer).
        interpolation_factor: Position Interpolation factor ``f >= 1``; positions are divided
            by ``f`` (``1.0`` is plain RoPE).
        base_rescale_factor: NTK-aware scaling ``s``: the base becomes
            ``base * s ** (r / (r - 2))`` (x-transformers' ``rotary_base_rescale_factor``).
        scaling: a frequency rescaling (YaRN or Llama 3, see :mod:`rotary_scaling`), or None.
        xpos_scale_base: xPos (arXiv 2212.10554) scale base: query pair i is multiplied by
            ``zeta_i ** (p / xpos_scale_base)`` and key pair i divided by it; None: no xPos.
        interleaved: pair layout (see the module docstring).
    """

    def __init__(
        self,
        dim: int,
        base: float = 10000.0,
        interpolation_factor: float = 1.0,
        base_rescale_factor: float = 1.0,
        scaling: FrequencyScaling | None = None,
        xpos_scale_base: float | None = None,
        interleaved: bool = False,
    ) -> None:
        super().__init__()
        owner = "RotaryEmbedding"
        check_positive_int("dim", dim, owner)
        if dim % 2 != 0:
            raise ValueError(
                f"{owner}: 'dim' (rotary dim) must be even because dims are rotated in pairs, "
                f"got {dim}; use {dim - 1} or {dim + 1}"
            )
        base = _check_number("base", base, owner, 1.0, strict=True)
        self.interpolation_factor = _check_number(
            "interpolation_factor", interpolation_factor, owner, 1.0, strict=False
        )
        self.base_rescale_factor = _check_number(
            "base_rescale_factor", base_rescale_factor, owner, 0.0, strict=True
        )
        if self.base_rescale_factor != 1.0 and dim < 4:
            raise ValueError(
                f"{owner}: 'base_rescale_factor' (a stack's rotary_base_rescale_factor) "
                f"rescales the base by s ** (r / (r - 2)), which needs a rotary dim r >= 4, "
                f"got {dim}; raise rotary_emb_dim (or the head dim) or drop the factor"
            )
        if xpos_scale_base is not None:
            xpos_scale_base = _check_number("xpos_scale_base", xpos_scale_base, owner, 0.0, True)
        if not isinstance(interleaved, bool):
            raise TypeError(f"{owner}: 'interleaved' must be a bool, got {interleaved!r}")
        self.dim, self.base, self.scaling = dim, base, scaling
        self.xpos_scale_base, self.interleaved = xpos_scale_base, interleaved
        # (key, table of positions 0 ... L - 1): see slot_table
        self._kept: tuple[tuple, RotaryTable] | None = None

    def frequencies(self, device: torch.device | str | None = None) -> Tensor:
        """Frequencies ``theta_i`` after any rescaling, ``(r // 2,)``, float64 (float32 on MPS).

        Position interpolation is not folded in: it acts on positions in :meth:`forward`.
        """
        device = torch.device(device) if device is not None else torch.device("cpu")
        base = ntk_base(self.base, self.base_rescale_factor, self.dim)
        exponent = torch.arange(0, self.dim, 2, dtype=_angle_dtype(device), device=device)
        theta = base ** (-exponent / self.dim)
        return theta if self.scaling is None else self.scaling.frequencies(theta, self.dim, base)

    def _wide_positions(self, positions: Tensor) -> Tensor:
        if not isinstance(positions, Tensor):
            raise TypeError(
                f"RotaryEmbedding: 'positions' must be a Tensor, got {type(positions).__name__}"
            )
        if positions.is_complex() or positions.dtype == torch.bool:
            raise TypeError(
                "RotaryEmbedding: 'positions' must be an integer or real float tensor, "
                f"got {positions.dtype}"
            )
        return positions.to(_angle_dtype(positions.device))

    def forward(self, positions: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Rotation angles for absolute positions.

        Args:
            positions: ``(n,)`` absolute token positions (integer or float); with a KV cache
                these are ``p0 + arange(n)``. Extra leading dims are allowed and kept.
            dtype: dtype of the returned angles (float32 by default; float64 for exact tests).

        Returns:
            ``(..., n, r // 2)`` angles ``positions / interpolation_factor * theta``, computed
            in float64 and cast to ``dtype``.
        """
        pos = self._wide_positions(positions) / self.interpolation_factor
        return (pos.unsqueeze(-1) * self.frequencies(positions.device)).to(dtype)

    def table(self, positions: Tensor, dtype: torch.dtype = torch.float32) -> RotaryTable:
        """cos / sin (and pair magnitudes) of ``positions`` (..., n), cast to ``dtype`` last."""
        angles = self.forward(positions, dtype=_angle_dtype(positions.device))
        q_scale = k_scale = None
        if self.xpos_scale_base is not None:
            q_scale = xpos_scale(self._wide_positions(positions), self.dim, self.xpos_scale_base)
            k_scale = q_scale.reciprocal()
        magnitude = 1.0 if self.scaling is None else self.scaling.magnitude
        if magnitude != 1.0:  # YaRN's attention temperature, on both queries and keys
            ones = torch.ones_like(angles)
            q_scale = magnitude * (ones if q_scale is None else q_scale)
            k_scale = magnitude * (ones if k_scale is None else k_scale)

        def cast(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(dtype)

        cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
        return RotaryTable(cos, sin, cast(q_scale), cast(k_scale), self.interleaved)

    def slot_table(
        self, start: int, stop: int, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> RotaryTable:
        """The table of positions ``start ... stop - 1``, cut from a kept table of ``0 ... L - 1``.

        Equal to ``table(torch.arange(start, stop), dtype)`` (plus :attr:`RotaryTable.wide`).
        The kept table is rebuilt, to the next power of two >= ``stop`` (at least 64), when
        ``stop`` passes its length (past :data:`KEEP_MAX_POSITIONS` the rows are computed for
        the call instead), when the device, the dtype or a setting that shapes the
        angles (dim, base, interpolation and base rescale factors, scaling, xPos, layout)
        changed, and when it was built under ``torch.inference_mode`` but is needed outside it
        (an inference tensor cannot be saved for backward). Nothing is kept while compiling.
        """
        if torch.compiler.is_compiling() or stop > KEEP_MAX_POSITIONS:
            return self.table(torch.arange(start, stop, device=device), dtype)
        key = (torch.device(device), dtype, self._settings())
        kept = self.__dict__.get("_kept")  # absent on a module pickled before it existed
        if (
            kept is None
            or kept[0] != key
            or kept[1].cos.shape[-2] < stop
            or (kept[1].cos.is_inference() and not torch.is_inference_mode_enabled())
        ):
            length = max(64, 1 << max(stop - 1, 1).bit_length())
            positions = torch.arange(length, device=device)
            kept = self._kept = (key, self.table(positions, dtype).with_wide())
        return kept[1].rows(start, stop)

    def _settings(self) -> tuple:
        """Everything besides the positions that shapes the angles and magnitudes."""
        return (
            self.dim,
            self.base,
            self.interpolation_factor,
            self.base_rescale_factor,
            self.scaling,
            self.xpos_scale_base,
            self.interleaved,
        )

    def extra_repr(self) -> str:
        parts = [f"dim={self.dim}", f"base={self.base}"]
        if self.interpolation_factor != 1.0:
            parts.append(f"interpolation_factor={self.interpolation_factor}")
        if self.base_rescale_factor != 1.0:
            parts.append(f"base_rescale_factor={self.base_rescale_factor}")
        if self.scaling is not None:
            parts.append(f"scaling={self.scaling}")
        if self.xpos_scale_base is not None:
            parts.append(f"xpos_scale_base={self.xpos_scale_base}")
        if self.interleaved:
            parts.append("interleaved=True")
        return ", ".join(parts)


def _split_pairs(x: Tensor, interleaved: bool) -> tuple[Tensor, Tensor]:
    if interleaved:
        pairs = rearrange(x, "... (f two) -> ... f two", two=2)
        return pairs[..., 0], pairs[..., 1]
    half = x.shape[-1] // 2
    return x[..., :half], x[..., half:]


def _join_pairs(a: Tensor, b: Tensor, interleaved: bool) -> Tensor:
    if interleaved:
        return rearrange(torch.stack((a, b), dim=-1), "... f two -> ... (f two)")
    return torch.cat((a, b), dim=-1)


def _check_rotation_inputs(t: Tensor, cos: Tensor) -> int:
    """The rotary dim r = 2 * cos.shape[-1], after checking it fits ``t``."""
    if not t.is_floating_point():
        raise TypeError(f"apply_rotary: 't' must be a floating tensor, got {t.dtype}")
    if cos.ndim < 1:
        raise ValueError("apply_rotary: 'angles' must have shape (n, r/2), got a scalar")
    r = 2 * cos.shape[-1]
    if t.ndim < 2 or t.shape[-1] < r:
        raise ValueError(
            f"apply_rotary: rotary dim r = 2 * angles.shape[-1] = {r} exceeds the last dim of "
            f"'t' (shape {tuple(t.shape)}); use a RotaryEmbedding dim <= the head dim"
        )
    if cos.ndim >= 2 and cos.shape[-2] not in (1, t.shape[-2]):
        raise ValueError(
            f"apply_rotary: 'angles' has {cos.shape[-2]} positions but 't' has "
            f"{t.shape[-2]} tokens; pass one position per token (p0 + arange(n) with a cache)"
        )
    return r


def rotate_pairs(
    t: Tensor, cos: Tensor, sin: Tensor, scale: Tensor | None = None, interleaved: bool = False
) -> Tensor:
    """Rotate the first ``r = 2 * cos.shape[-1]`` dims of ``t`` pair by pair.

    Pair ``(a, b)`` at angle ``x`` becomes ``(a cos x - b sin x, a sin x + b cos x)``, times
    ``scale`` when given. Tables of shape (b, n, f) (per-sample positions) apply to
    (b, h, n, d) tensors head by head. The rotation runs in float32 for float16 / bfloat16
    ``t`` and in ``t.dtype`` otherwise; dims ``r:`` are returned bit-identical.
    """
    r = _check_rotation_inputs(t, cos)
    if cos.ndim == 3 and t.ndim == 4:  # per-sample positions: the same rows for every head
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        scale = None if scale is None else scale.unsqueeze(1)
    compute = torch.float32 if t.dtype in _LOW_PRECISION else t.dtype
    cos, sin = cos.to(compute), sin.to(compute)
    a, b = _split_pairs(t[..., :r].to(compute), interleaved)
    a, b = a * cos - b * sin, a * sin + b * cos
    if scale is not None:
        scale = scale.to(compute)
        a, b = a * scale, b * scale
    rotated = _join_pairs(a, b, interleaved).to(t.dtype)
    if r == t.shape[-1]:
        return rotated
    return torch.cat((rotated, t[..., r:]), dim=-1)


def apply_rotary(t: Tensor, angles: Tensor, interleaved: bool = False) -> Tensor:
    """Rotate the first ``r = 2 * angles.shape[-1]`` dims of ``t`` by ``angles``.

    Half-split layout by default: pair ``(t[..., i], t[..., i + r/2])`` at angle ``a_i``
    becomes ``(t_i cos a_i - t_{i+r/2} sin a_i, t_i sin a_i + t_{i+r/2} cos a_i)``;
    ``interleaved=True`` pairs ``(t[..., 2i], t[..., 2i + 1])`` instead.

    Args:
        t: ``(..., n, d)`` queries or keys, ``d >= r``.
        angles: ``(n, r/2)`` from :class:`RotaryEmbedding` (anything broadcastable to
            ``(..., n, r/2)`` works, e.g. ``(b, 1, n, r/2)`` for per-sample positions).
        interleaved: the pair layout.

    Returns:
        ``(..., n, d)`` tensor in ``t.dtype``; dims ``r:`` are bit-identical to the input.
        The rotation is computed in float32 when ``t`` is float16/bfloat16, else in ``t.dtype``.
    """
    if angles.dtype in _LOW_PRECISION:
        angles = angles.float()
    _check_rotation_inputs(t, angles)
    return rotate_pairs(t, angles.cos(), angles.sin(), None, interleaved)
