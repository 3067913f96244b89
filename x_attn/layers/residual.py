"""Rules that merge a block's output (``branch``) back into the residual stream.

- Residual: ``residual + scale * branch`` (``scale = 0.5`` for macaron feed-forwards).
- ReZeroResidual: Bachlechner et al., "ReZero is All You Need", arXiv 2003.04887.
  ``residual + alpha * branch`` with a learned scalar ``alpha`` initialised to 0, so every
  layer starts as the identity.
- GRUGating: Parisotto et al., "Stabilizing Transformers for Reinforcement Learning"
  (GTrXL), arXiv 1910.06764, GRU-type gating with ``x`` the residual stream and ``y`` the
  branch output::

      r = sigmoid(W_r y + U_r x)
      z = sigmoid(W_z y + U_z x - b_g)
      h = tanh(W_g y + U_g (r * x))
      out = (1 - z) * x + z * h

  ``b_g > 0`` (default 2.0) keeps the gate near the identity map at initialisation.

All rules act on the last axis; shapes are (b, n, d) (b batch, n sequence, d model dim).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from x_attn.utils import check_positive_int


def _check_scale(scale: float, owner: str) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"{owner}: 'scale' must be a float, got {type(scale).__name__}")
    if not scale > 0:
        raise ValueError(f"{owner}: 'scale' must be > 0 (1.0 plain, 0.5 macaron), got {scale}")
    return float(scale)


class Residual(nn.Module):
    """Plain scaled residual: ``out = residual + scale * branch``.

    Args:
        dim: model width (unused; kept so every rule has the same constructor).
        scale: multiplier of the branch.
    """

    def __init__(self, dim: int, scale: float = 1.0) -> None:
        super().__init__()
        check_positive_int("dim", dim, "Residual")
        self.scale = _check_scale(scale, "Residual")

    def forward(self, branch: Tensor, residual: Tensor) -> Tensor:
        """Args: branch (b, n, d), residual (b, n, d). Returns: (b, n, d)."""
        if self.scale == 1.0:  # the same sum without the multiply (one op less per layer)
            return residual + branch
        return residual + self.scale * branch

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class ReZeroResidual(nn.Module):
    """ReZero: ``out = residual + scale * alpha * branch``, learned ``alpha`` init 0.

    Args:
        dim: model width (unused; ``alpha`` is a single scalar as in the paper).
        scale: fixed multiplier of the branch on top of ``alpha``.
    """

    def __init__(self, dim: int, scale: float = 1.0) -> None:
        super().__init__()
        check_positive_int("dim", dim, "ReZeroResidual")
        self.scale = _check_scale(scale, "ReZeroResidual")
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, branch: Tensor, residual: Tensor) -> Tensor:
        """Args: branch (b, n, d), residual (b, n, d). Returns: (b, n, d)."""
        return residual + (self.scale * self.alpha) * branch

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class GRUGating(nn.Module):
    """GTrXL GRU-type gate between the residual stream ``x`` and the branch ``y``.

    Args:
        dim: model width ``d``; every W_* and U_* is a (d, d) linear map without bias.
        scale: multiplies the branch before gating (``y = scale * branch``).
        gate_bias: initial value of the learned per-feature bias ``b_g``.
    """

    def __init__(self, dim: int, scale: float = 1.0, gate_bias: float = 2.0) -> None:
        super().__init__()
        check_positive_int("dim", dim, "GRUGating")
        self.scale = _check_scale(scale, "GRUGating")
        if isinstance(gate_bias, bool) or not isinstance(gate_bias, (int, float)):
            raise TypeError(
                f"GRUGating: 'gate_bias' must be a float, got {type(gate_bias).__name__}"
            )
        self.w_r = nn.Linear(dim, dim, bias=False)
        self.u_r = nn.Linear(dim, dim, bias=False)
        self.w_z = nn.Linear(dim, dim, bias=False)
        self.u_z = nn.Linear(dim, dim, bias=False)
        self.w_g = nn.Linear(dim, dim, bias=False)
        self.u_g = nn.Linear(dim, dim, bias=False)
        self.b_g = nn.Parameter(torch.full((dim,), float(gate_bias)))

    def forward(self, branch: Tensor, residual: Tensor) -> Tensor:
        """Args: branch (b, n, d), residual (b, n, d). Returns: (b, n, d)."""
        x, y = residual, self.scale * branch
        r = torch.sigmoid(self.w_r(y) + self.u_r(x))
        z = torch.sigmoid(self.w_z(y) + self.u_z(x) - self.b_g)
        h = torch.tanh(self.w_g(y) + self.u_g(r * x))
        return (1 - z) * x + z * h

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def make_residual(dim: int, *, rezero: bool, gated: bool, scale: float = 1.0) -> nn.Module:
    """Choose the residual rule.

    Args:
        dim: model width.
        rezero: use ReZeroResidual (``use_rezero``).
        gated: use GRUGating (``gate_residual``).
        scale: branch multiplier (0.5 for macaron feed-forwards).

    Raises:
        ValueError: both ``rezero`` and ``gated`` are set.
    """
    if rezero and gated:
        raise ValueError(
            "make_residual: 'use_rezero' and 'gate_residual' are two different residual rules; "
            "choose one"
        )
    if rezero:
        return ReZeroResidual(dim, scale=scale)
    if gated:
        return GRUGating(dim, scale=scale)
    return Residual(dim, scale=scale)
