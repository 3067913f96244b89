"""Absolute positional embeddings: sinusoidal (fixed), learned, and scaled sinusoidal.

Sinusoidal encoding from Attention Is All You Need (Vaswani et al., arXiv 1706.03762),
section 3.5, in the paper's interleaved layout. The learned table is the alternative of the same
paper (Table 3, row E). The scaled sinusoid (one learned scalar, initialised to ``dim ** -0.5``)
is the learned-scale variant used with FLASH, Transformer Quality in Linear Time
(Hua et al., arXiv 2202.10447).

Shape legend: n sequence, d model dim, f frequencies (d / 2).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from x_attn.utils import check_positive_int
from x_attn.value_checks import require_all


def _check_positions_1d(positions: Tensor, owner: str) -> None:
    if not isinstance(positions, Tensor):
        raise TypeError(f"{owner}: 'positions' must be a Tensor, got {type(positions).__name__}")
    if positions.ndim != 1:
        raise ValueError(
            f"{owner}: 'positions' must be 1-D (n,), got shape {tuple(positions.shape)}"
        )


def sinusoidal_table(
    positions: Tensor, dim: int, base: float = 10000.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Fixed sinusoidal encodings, interleaved as in the paper.

    ``PE[p, 2i] = sin(p / base ** (2i / dim))`` and ``PE[p, 2i + 1] = cos(p / base ** (2i / dim))``.

    Args:
        positions: ``(n,)`` absolute positions (integer or float).
        dim: encoding size (even).
        base: wavelength base (10000 in the paper).
        dtype: dtype of the result; the table is computed in float64 first.

    Returns:
        ``(n, dim)`` table.
    """
    owner = "sinusoidal_table"
    _check_positions_1d(positions, owner)
    check_positive_int("dim", dim, owner)
    if dim % 2 != 0:
        raise ValueError(
            f"{owner}: 'dim' must be even (sin/cos pairs), got {dim}; use {dim - 1} or {dim + 1}"
        )
    wide = torch.float32 if positions.device.type == "mps" else torch.float64
    two_i = torch.arange(0, dim, 2, dtype=wide, device=positions.device)
    inv_freq = base ** (-two_i / dim)
    angles = rearrange(positions.to(wide), "n -> n 1") * inv_freq
    table = torch.stack((angles.sin(), angles.cos()), dim=-1)
    return rearrange(table, "n f two -> n (f two)").to(dtype)


class AbsolutePositionalEmbedding(nn.Module):
    """Learned absolute position table.

    Args:
        dim: embedding size.
        max_seq_len: number of positions in the table (positions ``0 ... max_seq_len - 1``).
    """

    def __init__(self, dim: int, max_seq_len: int) -> None:
        super().__init__()
        owner = "AbsolutePositionalEmbedding"
        check_positive_int("dim", dim, owner)
        check_positive_int("max_seq_len", max_seq_len, owner)
        self.dim = dim
        self.max_seq_len = max_seq_len
        self.emb = nn.Embedding(max_seq_len, dim)
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, positions: Tensor) -> Tensor:
        """Look up positions.

        Args:
            positions: ``(n,)`` integer absolute positions.

        Returns:
            ``(n, dim)`` embeddings.
        """
        owner = "AbsolutePositionalEmbedding"
        _check_positions_1d(positions, owner)
        if positions.is_floating_point() or positions.dtype == torch.bool:
            raise TypeError(
                f"{owner}: 'positions' must be an integer tensor, got {positions.dtype}"
            )
        require_all(
            positions < self.max_seq_len,
            f"{owner}: a position is beyond the learned table (max_seq_len={self.max_seq_len}); "
            "raise max_seq_len, or use relative positions (e.g. rotary_pos_emb=True) with "
            "use_abs_pos_emb=False",
            lambda: f"; got position {int(positions.max())}",
        )
        require_all(
            positions >= 0,
            f"{owner}: positions must be >= 0",
            lambda: f", got {int(positions.min())}",
        )
        return self.emb(positions.long())


class SinusoidalEmbedding(nn.Module):
    """The fixed sinusoids of Attention Is All You Need (arXiv 1706.03762), section 3.5.

    ``PE[p, 2i] = sin(p / base ** (2i / dim))``, ``PE[p, 2i + 1] = cos(...)``: no parameters,
    defined for any position (computed in float64, then cast). The paper also multiplies the
    token embeddings by ``sqrt(dim)``; x_attn's token embedding does not.

    Args:
        dim: embedding size (even).
        base: wavelength base (10000 in the paper).
    """

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        owner = "SinusoidalEmbedding"
        check_positive_int("dim", dim, owner)
        if dim % 2 != 0:
            raise ValueError(f"{owner}: 'dim' must be even, got {dim}; use {dim - 1} or {dim + 1}")
        self.dim, self.base = dim, float(base)

    def forward(self, positions: Tensor) -> Tensor:
        """``(n,)`` absolute positions -> ``(n, dim)`` float32 sinusoids."""
        return sinusoidal_table(positions, self.dim, self.base)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base}"


class ScaledSinusoidalEmbedding(SinusoidalEmbedding):
    """Fixed sinusoid times one learned scalar, initialised to ``dim ** -0.5``.

    Args:
        dim: embedding size (even).
        base: wavelength base of the sinusoid.
    """

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__(dim, base)
        self.scale = nn.Parameter(torch.tensor(dim**-0.5))

    def forward(self, positions: Tensor) -> Tensor:
        """Scaled encodings.

        Args:
            positions: ``(n,)`` absolute positions.

        Returns:
            ``(n, dim)`` tensor in the dtype of the scale parameter.
        """
        table = sinusoidal_table(positions, self.dim, self.base, dtype=self.scale.dtype)
        return table * self.scale
