"""Orthogonal residual update: Oh et al., "Revisiting Residual Connections: Orthogonal Updates
for Stable and Efficient Deep Networks", arXiv 2505.11881 (``orthog_residual=True``).

A block's output ``f`` joins the stream ``x`` only through its part orthogonal to ``x``::

    f_perp = f - (<f, x> / (<x, x> + eps)) x        out = x + f_perp

The projection is taken per token over the feature axis (the paper's feature-wise variant,
"Orthogonal-F", used for its transformers), so a token's update reads no other token: causality,
the KV cache and padding are unaffected. x-transformers 2.31 projects over the whole (n, d)
slice of a sequence instead, which lets later tokens change earlier ones in a Decoder; x_attn
does not follow it there (docs/compat.md).

Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from x_attn.utils import check_positive_int

EPS = 1e-6  # keeps a zero stream (<x, x> = 0) from dividing by zero: the update passes whole


class OrthogonalResidual(nn.Module):
    """``out = residual + (branch - proj_residual(branch))``, per token.

    Args:
        dim: model width (no parameters).
        scale: multiplier of the branch before the projection (0.5 for macaron halves).
    """

    def __init__(self, dim: int, scale: float = 1.0) -> None:
        super().__init__()
        check_positive_int("dim", dim, "OrthogonalResidual")
        self.scale = float(scale)

    def forward(self, branch: Tensor, residual: Tensor) -> Tensor:
        """Args: branch (b, n, d), residual (b, n, d). Returns: (b, n, d)."""
        dtype = torch.promote_types(branch.dtype, torch.float32)  # dot products in >= float32
        f, x = self.scale * branch.to(dtype), residual.to(dtype)
        coeff = (f * x).sum(-1, keepdim=True) / ((x * x).sum(-1, keepdim=True) + EPS)
        return residual + (f - coeff * x).to(residual.dtype)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
