"""Normalization layers over the model dimension.

- RMSNorm: Zhang & Sennrich, "Root Mean Square Layer Normalization", arXiv 1910.07467.
  ``y = x / sqrt(mean(x^2) + eps) * g`` with a learned gain ``g`` per feature (init ones).
- ScaleNorm: Nguyen & Salazar, "Transformers without Tears", arXiv 1910.05895.
  ``y = g * x / max(||x||_2, eps)`` with one learned scalar ``g`` (init ``sqrt(dim)``).
- SimpleRMSNorm: RMSNorm without a gain, ``y = sqrt(d) * x / max(||x||_2, eps)``
  (x-transformers' ``use_simple_rmsnorm``; no parameters).
- Conditioned (adaptive) norms live in :mod:`x_attn.layers.conditioning`, point-wise
  replacements (DyT, Derf) in :mod:`x_attn.layers.pointwise_norms`.

Both normalize the last axis, so any leading shape works. Half-precision inputs are
normalized in float32 (``eps`` underflows float16 and ``x ** 2`` overflows it past 256) and
cast back before the gain.
Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

import math
from typing import get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from x_attn.config import NormKind
from x_attn.utils import check_positive_int, compute_dtype

NORM_KINDS: tuple[str, ...] = get_args(NormKind)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (Ba et al., arXiv 1607.06450) whose mean and variance are taken in
    float32 for float16 / bfloat16 inputs (PyTorch's kernel accumulates in float32 but keeps
    the statistics it saves for backward in the input's dtype); output in the input's dtype.
    Same parameters and state_dict keys as ``nn.LayerNorm``."""

    def forward(self, x: Tensor) -> Tensor:
        wide = compute_dtype(x.dtype)
        if wide == x.dtype:
            return super().forward(x)
        weight = None if self.weight is None else self.weight.to(wide)
        bias = None if self.bias is None else self.bias.to(wide)
        out = F.layer_norm(x.to(wide), self.normalized_shape, weight, bias, self.eps)
        return out.to(x.dtype)


def _check_eps(eps: float, owner: str) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"{owner}: 'eps' must be a float, got {type(eps).__name__}")
    if not eps > 0:
        raise ValueError(f"{owner}: 'eps' must be > 0 (it guards a division), got {eps}")


# dtypes reduced in themselves: torch's rms_norm is then bit-identical to the formula below
_FULL = (torch.float32, torch.float64)


class RMSNorm(nn.Module):
    """Root-mean-square normalization with a per-feature gain (no centering, no bias).

    Args:
        dim: size ``d`` of the normalized last axis.
        eps: added to the mean square before the square root.
    """

    def __init__(self, dim: int, eps: float = 1e-8) -> None:
        super().__init__()
        check_positive_int("dim", dim, "RMSNorm")
        _check_eps(eps, "RMSNorm")
        self.dim = dim
        self.eps = float(eps)
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """Normalize ``x``.

        Args:
            x: (..., d), e.g. (b, n, d).

        Returns:
            Tensor of the same shape.
        """
        g = self.g
        if x.dtype == g.dtype and x.dtype in _FULL:  # the same ops, dispatched at once
            return F.rms_norm(x, (self.dim,), g, self.eps)
        xf = x.to(compute_dtype(x.dtype))
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * g

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class ScaleNorm(nn.Module):
    """L2 normalization of each vector followed by one learned scalar gain.

    Args:
        dim: size ``d`` of the normalized last axis (sets the initial gain ``sqrt(d)``).
        eps: lower bound on the norm, so a zero vector maps to zero instead of NaN.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        check_positive_int("dim", dim, "ScaleNorm")
        _check_eps(eps, "ScaleNorm")
        self.dim = dim
        self.eps = float(eps)
        self.g = nn.Parameter(torch.tensor(math.sqrt(dim)))

    def forward(self, x: Tensor) -> Tensor:
        """Normalize ``x``.

        Args:
            x: (..., d), e.g. (b, n, d).

        Returns:
            Tensor of the same shape.
        """
        xf = x.to(compute_dtype(x.dtype))
        norm = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).clamp(min=self.eps)
        return self.g * (xf / norm).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class SimpleRMSNorm(nn.Module):
    """``sqrt(d) * x / max(||x||_2, eps)``: RMS normalization without a learned gain.

    Args:
        dim: size ``d`` of the normalized last axis.
        eps: lower bound on the norm (a zero vector maps to zero).
    """

    def __init__(self, dim: int, eps: float = 1e-12) -> None:
        super().__init__()
        check_positive_int("dim", dim, "SimpleRMSNorm")
        _check_eps(eps, "SimpleRMSNorm")
        self.dim, self.eps = dim, float(eps)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., d) -> same shape."""
        return unit_rms(x, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


def unit_rms(x: Tensor, eps: float = 1e-12) -> Tensor:
    """``sqrt(d) * x / max(||x||_2, eps)`` over the last axis, reduced in float32 for halves."""
    xf = x.to(compute_dtype(x.dtype))
    norm = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).clamp(min=eps)
    return (xf * (x.shape[-1] ** 0.5 / norm)).to(x.dtype)


# the kinds whose eps ``norm_eps`` sets (the others have no eps)
EPS_NORM_KINDS = ("layernorm", "rmsnorm", "scalenorm", "simple_rmsnorm")


def make_norm(
    kind: str,
    dim: int,
    dim_condition: int | None = None,
    tanh_alpha: float = 1.0,
    eps: float | None = None,
) -> nn.Module:
    """Build the normalization layer named ``kind`` over ``dim`` features.

    Args:
        kind: one of :data:`NORM_KINDS`.
        dim: size of the normalized last axis.
        dim_condition: width of the condition of the adaptive kinds (default ``dim``).
        tanh_alpha: initial ``alpha`` of ``"dynamic_tanh"``.
        eps: the eps of the kinds in :data:`EPS_NORM_KINDS` (None: each kind's default:
            1e-5 for LayerNorm and ScaleNorm, 1e-8 for RMSNorm, 1e-12 for SimpleRMSNorm).

    Returns:
        ``nn.LayerNorm(dim)``, ``RMSNorm``, ``ScaleNorm``, ``SimpleRMSNorm``, or an adaptive
        norm of :mod:`x_attn.layers.conditioning` (called as ``norm(x, condition)``).

    Raises:
        ValueError: ``kind`` is not one of the known kinds.
    """
    if eps is not None and kind not in EPS_NORM_KINDS:
        raise ValueError(f"make_norm: the {kind!r} norm has no eps; drop norm_eps")
    given = {} if eps is None else {"eps": eps}
    if kind == "layernorm":
        check_positive_int("dim", dim, "make_norm")
        if eps is not None:
            _check_eps(eps, "LayerNorm")
        return LayerNorm(dim, **given)
    if kind == "rmsnorm":
        return RMSNorm(dim, **given)
    if kind == "scalenorm":
        return ScaleNorm(dim, **given)
    if kind == "simple_rmsnorm":
        return SimpleRMSNorm(dim, **given)
    if kind in ("adaptive_layernorm", "adaptive_rmsnorm"):
        from x_attn.layers.conditioning import AdaptiveNorm

        return AdaptiveNorm(dim, dim_condition or dim, rms=kind == "adaptive_rmsnorm")
    if kind in ("dynamic_tanh", "derf"):
        from x_attn.layers.pointwise_norms import DynamicErf, DynamicTanh

        return DynamicTanh(dim, tanh_alpha) if kind == "dynamic_tanh" else DynamicErf(dim)
    known = ", ".join(repr(k) for k in NORM_KINDS)
    raise ValueError(f"make_norm: unknown norm kind {kind!r}; choose one of {known}")
