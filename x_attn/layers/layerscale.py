"""LayerScale: Touvron et al., "Going deeper with Image Transformers" (CaiT), arXiv 2103.17239.

Each branch output is multiplied by a learned per-feature vector ``gamma`` (a diagonal matrix)
before it joins the residual stream: ``x + gamma * f(x)``. x-transformers initialises ``gamma``
to ``layerscale_init_value`` (default 0: every layer starts as the identity).

Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LayerScale(nn.Module):
    """``branch * gamma`` with a learned ``gamma`` (d,) initialised to ``init_value``."""

    def __init__(self, dim: int, init_value: float = 0.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, branch: Tensor) -> Tensor:
        """branch (b, n, d) -> (b, n, d)."""
        return branch * self.gamma
