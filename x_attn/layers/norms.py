"""Normalization layers over the model dimension.

- RMSNorm: Zhang & Sennrich, "Root Mean Square Layer Normalization", arXiv 1910.07467.
  ``y = x / sqrt(mean(x^2) + eps) * g`` with a learned gain ``g`` per feature (init ones).
- ScaleNorm: Nguyen & Salazar, "Transformers without Tears", arXiv 1910.05895.
  ``y = g * x / max(||x||_2, eps)`` with one learned scalar ``g`` (init ``sqrt(dim)``).

Both normalize the last axis, so any leading shape works. Half-precision inputs are
normalized in float32 (``eps`` underflows float16 and ``x ** 2`` overflows it past 256) and
cast back before the gain.
Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from x_attn.utils import check_positive_int, compute_dtype

NORM_KINDS: tuple[str, ...] = ("layernorm", "rmsnorm", "scalenorm")


def _check_eps(eps: float, owner: str) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"{owner}: 'eps' must be a float, got {type(eps).__name__}")
    if not eps > 0:
        raise ValueError(f"{owner}: 'eps' must be > 0 (it guards a division), got {eps}")


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
        xf = x.to(compute_dtype(x.dtype))
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.g

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


def make_norm(kind: str, dim: int) -> nn.Module:
    """Build the normalization layer named ``kind`` over ``dim`` features.

    Args:
        kind: one of ``"layernorm"``, ``"rmsnorm"``, ``"scalenorm"``.
        dim: size of the normalized last axis.

    Returns:
        ``nn.LayerNorm(dim)``, ``RMSNorm(dim)`` or ``ScaleNorm(dim)``.

    Raises:
        ValueError: ``kind`` is not one of the known kinds.
    """
    if kind == "layernorm":
        check_positive_int("dim", dim, "make_norm")
        return nn.LayerNorm(dim)
    if kind == "rmsnorm":
        return RMSNorm(dim)
    if kind == "scalenorm":
        return ScaleNorm(dim)
    known = ", ".join(repr(k) for k in NORM_KINDS)
    raise ValueError(f"make_norm: unknown norm kind {kind!r}; choose one of {known}")
