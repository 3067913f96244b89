"""ResiDual: Xie et al., "ResiDual: Transformer with Dual Residual Connections", arXiv 2304.14802.

Two residual streams share every branch ``f_k``. The post-norm stream feeds the branches,
``x_{k+1} = LN(x_k + f_k(x_k))``; the dual stream only accumulates the branch outputs,
``d_{k+1} = d_k + f_k(x_k)`` with ``d_0 = x_0``; the output is ``x_N + LN(d_N)``. The dual
stream keeps the pre-norm gradient path, the post-norm stream its representational diversity.
As in earlier x-transformers, the dual stream is held multiplied by ``resi_dual_scale``
(in (0, 1]) so that it does not overflow in float16; LayerNorm removes the factor again
(up to its eps).

Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

from torch import Tensor, nn


class DualStream:
    """The dual (pre-norm) stream of one forward."""

    def __init__(self, x: Tensor, scale: float) -> None:
        self.scale = scale
        self.total = x * scale

    def add(self, branch: Tensor) -> None:
        """Accumulate a branch output f_k(x_k) (b, n, d)."""
        self.total = self.total + branch * self.scale

    def output(self, x: Tensor, final_norm: nn.Module) -> Tensor:
        """``x_N + final_norm(d_N)``."""
        return x + final_norm(self.total)
