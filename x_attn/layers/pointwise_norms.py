"""Point-wise replacements of normalization layers (no statistics over features).

- DynamicTanh: Zhu et al., "Transformers without Normalization", arXiv 2503.10622:
  ``y = gamma * tanh(alpha * x) + beta`` with a learned scalar ``alpha`` (init
  ``dynamic_tanh_init_alpha``, default 1) and per-feature ``gamma`` (ones) / ``beta`` (zeros).
- DynamicErf (Derf): Chen et al., "Stronger Normalization-Free Transformers", arXiv
  2512.10938: ``y = gamma * erf(alpha * x + s) + beta`` with learned scalars ``alpha``
  (init 0.5) and ``s`` (init 0).

Shape legend: any leading shape, d features (the last axis).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from x_attn.utils import check_positive_int


class DynamicTanh(nn.Module):
    """``gamma * tanh(alpha * x) + beta``."""

    def __init__(self, dim: int, init_alpha: float = 1.0) -> None:
        super().__init__()
        check_positive_int("dim", dim, "DynamicTanh")
        self.alpha = nn.Parameter(torch.tensor(float(init_alpha)))
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        """x (..., d) -> same shape."""
        return torch.tanh(self.alpha * x) * self.gamma + self.beta


class DynamicErf(nn.Module):
    """``gamma * erf(alpha * x + s) + beta``."""

    def __init__(self, dim: int, init_alpha: float = 0.5, init_shift: float = 0.0) -> None:
        super().__init__()
        check_positive_int("dim", dim, "DynamicErf")
        self.alpha = nn.Parameter(torch.tensor(float(init_alpha)))
        self.shift = nn.Parameter(torch.tensor(float(init_shift)))
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        """x (..., d) -> same shape."""
        return torch.erf(self.alpha * x + self.shift) * self.gamma + self.beta
