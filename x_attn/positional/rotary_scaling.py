"""Rescaled rotary frequencies for contexts longer than the training length.

All three change only the frequencies ``theta_i = base ** (-2i / r)`` of RoPE (pair index
``i = 0 ... r/2 - 1``); position interpolation (arXiv 2306.15595), which divides positions
instead, lives in :class:`x_attn.positional.rotary.RotaryEmbedding`. With ``s`` the scale
factor and ``L`` the original (pre-training) context:

* NTK-aware base (community method, 2023; x-transformers ``rotary_base_rescale_factor``):
  ``base' = base * s ** (r / (r - 2))``, so ``theta_0`` is unchanged and the lowest frequency
  is divided by exactly ``s`` (Hugging Face ``rope_type="dynamic"`` applies the same rule with
  ``s`` recomputed from the current length; not provided here, see
  docs/mechanisms/rotary-scaling.md).
* YaRN (Peng et al., arXiv 2309.00071), "NTK-by-parts" + attention temperature, in the form of
  its reference code (and of Hugging Face ``rope_type="yarn"``): with the correction dims
  ``c(beta) = r * ln(L / (2 pi beta)) / (2 ln base)`` (the pair index whose wavelength fits
  ``beta`` times into ``L``), ``lo = floor(c(beta_fast))``, ``hi = ceil(c(beta_slow))`` clamped
  to ``[0, r - 1]``, the ramp ``g_i = clamp((i - lo) / (hi - lo), 0, 1)`` and
  ``theta'_i = theta_i * (1 - g_i) + theta_i / s * g_i``. Pairs that turn more than
  ``beta_fast`` times over ``L`` keep their frequency, pairs that turn less than ``beta_slow``
  times are interpolated (the paper's gamma = 1 and 0 regions); between them the reference code
  ramps linearly in the pair index. Queries and keys are also multiplied by
  ``m = 0.1 ln s + 1`` (``sqrt(1/t)`` of the paper), so the logits are scaled by ``m ** 2``.
* Llama 3 (Hugging Face ``rope_type="llama3"``): wavelengths ``2 pi / theta_i`` above
  ``L / low_freq_factor`` are divided by ``s``, below ``L / high_freq_factor`` kept, and in
  between ``theta' = (1 - a) theta / s + a theta`` with
  ``a = (L / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)``.

Shape legend: f = r/2 frequencies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


class FrequencyScaling(Protocol):
    """A rule that rescales RoPE frequencies (and possibly the q/k magnitudes)."""

    magnitude: float

    def frequencies(self, theta: Tensor, dim: int, base: float) -> Tensor:
        """(f,) rescaled frequencies from the plain ones (float64 in, float64 out)."""
        ...


def ntk_base(base: float, factor: float, dim: int) -> float:
    """NTK-aware base ``base * factor ** (r / (r - 2))`` (``base`` itself when factor is 1)."""
    if factor == 1.0:
        return base
    return base * factor ** (dim / (dim - 2))


def yarn_mscale(factor: float) -> float:
    """YaRN's q/k magnitude ``0.1 ln s + 1`` (``sqrt(1/t)`` in the paper); 1 for ``s <= 1``."""
    return 1.0 if factor <= 1.0 else 0.1 * math.log(factor) + 1.0


def _number(flag: str, value: object, low: float, strict: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"'{flag}' must be a number, got {type(value).__name__} {value!r}")
    if not (value > low if strict else value >= low) or not math.isfinite(value):
        relation = ">" if strict else ">="
        raise ValueError(f"'{flag}' must be finite and {relation} {low}, got {value}")
    return float(value)


def _ordered(low_flag: str, low: object, high_flag: str, high: object, typical: str) -> None:
    """Both positive numbers, ``high > low``."""
    low, high = _number(low_flag, low, 0.0), _number(high_flag, high, 0.0)
    if high <= low:
        raise ValueError(f"'{high_flag}' ({high}) must exceed '{low_flag}' ({low}) ({typical})")


def _length(flag: str, value: object, scheme: str) -> int:
    if value is None:
        raise ValueError(
            f"'{flag}' is required by {scheme}: the context length the model was trained on "
            "(e.g. 4096 for Llama 2, 8192 for Llama 3.1)"
        )
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"'{flag}' must be an int >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class YarnScaling:
    """YaRN frequencies and attention temperature (arXiv 2309.00071).

    Attributes:
        factor: ``s >= 1``, the context extension (``rotary_yarn_factor``).
        original_max_len: ``L``, the training context (``rotary_yarn_original_max_len``).
        beta_fast: rotations over ``L`` above which a pair is kept (paper: beta = 32).
        beta_slow: rotations over ``L`` below which a pair is interpolated (paper: alpha = 1).
        attn_factor: the q/k magnitude; None = ``0.1 ln s + 1``.
    """

    factor: float
    original_max_len: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attn_factor: float | None = None

    def __post_init__(self) -> None:
        _number("rotary_yarn_factor", self.factor, 1.0, strict=False)
        _length("rotary_yarn_original_max_len", self.original_max_len, "rotary_yarn_factor")
        _ordered(
            "rotary_yarn_beta_slow",
            self.beta_slow,
            "rotary_yarn_beta_fast",
            self.beta_fast,
            "pairs turning more than beta_fast times over L are kept, fewer than beta_slow "
            "times interpolated; paper: 32 and 1",
        )
        if self.attn_factor is not None:
            _number("rotary_yarn_attn_factor", self.attn_factor, 0.0)

    @property
    def magnitude(self) -> float:
        return yarn_mscale(self.factor) if self.attn_factor is None else float(self.attn_factor)

    def correction_range(self, dim: int, base: float) -> tuple[int, int]:
        """(lo, hi): the pair indices where the ramp from kept to interpolated starts and ends."""

        def pair_index(rotations: float) -> float:
            return (
                dim
                * math.log(self.original_max_len / (rotations * 2 * math.pi))
                / (2 * math.log(base))
            )

        lo = max(math.floor(pair_index(self.beta_fast)), 0)
        hi = min(math.ceil(pair_index(self.beta_slow)), dim - 1)
        return lo, hi

    def frequencies(self, theta: Tensor, dim: int, base: float) -> Tensor:
        lo, hi = self.correction_range(dim, base)
        index = torch.arange(theta.shape[-1], dtype=theta.dtype, device=theta.device)
        width = max(hi - lo, 1e-3)  # lo == hi: a step (the reference code's guard)
        ramp = ((index - lo) / width).clamp(0.0, 1.0)
        return theta * (1 - ramp) + theta / self.factor * ramp


@dataclass(frozen=True)
class Llama3Scaling:
    """Llama 3.1 frequency rescaling (Hugging Face ``rope_type="llama3"``).

    Attributes:
        factor: ``s >= 1`` (Llama 3.1: 8).
        original_max_len: ``L`` (Llama 3.1: 8192).
        low_freq_factor: wavelengths above ``L / low_freq_factor`` are divided by ``s`` (1).
        high_freq_factor: wavelengths below ``L / high_freq_factor`` are kept (4).
    """

    factor: float
    original_max_len: int
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    magnitude: float = 1.0

    def __post_init__(self) -> None:
        _number("rotary_llama3_factor", self.factor, 1.0, strict=False)
        _length("rotary_llama3_original_max_len", self.original_max_len, "rotary_llama3_factor")
        _ordered(
            "rotary_llama3_low_freq_factor",
            self.low_freq_factor,
            "rotary_llama3_high_freq_factor",
            self.high_freq_factor,
            "Llama 3.1: 4 and 1",
        )

    def frequencies(self, theta: Tensor, dim: int, base: float) -> Tensor:
        ratio = self.original_max_len / (2 * math.pi / theta)  # L / wavelength
        blend = (ratio - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        blend = blend.clamp(0.0, 1.0)  # 0: long wavelengths (divided by s), 1: short (kept)
        return (1 - blend) * theta / self.factor + blend * theta
