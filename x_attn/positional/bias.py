"""Helpers shared by the additive position biases (T5, ALiBi, dynamic): positions in, heads out.

A bias module receives query and key positions with one of three layouts and returns the bias
with the heads in front of (i, j):

* shared ``(n,)`` positions -> ``(h, i, j)``;
* per-sample ``(b, n)`` -> ``(b, h, i, j)``;
* per-head ``(b, h, n)`` (each head its own positions, as x-transformers' custom ALiBi
  positions) -> ``(b, h, i, j)``.

Shape legend: b batch, h heads, i queries, j keys.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor


def check_positions(name: str, pos: Tensor, owner: str, heads: int) -> None:
    """``pos`` must be a (n,), (b, n) or (b, heads, n) tensor of real positions."""
    if not isinstance(pos, Tensor) or pos.is_complex() or pos.dtype == torch.bool:
        got = pos.dtype if isinstance(pos, Tensor) else type(pos).__name__
        raise TypeError(f"{owner}: '{name}' must be a real tensor of positions, got {got}")
    if pos.ndim not in (1, 2, 3) or (pos.ndim == 3 and pos.shape[1] != heads):
        raise ValueError(
            f"{owner}: '{name}' must have shape (n,), (batch, n) or (batch, heads={heads}, n), "
            f"got {tuple(pos.shape)}"
        )


def pairwise(q_pos: Tensor, k_pos: Tensor) -> Tensor:
    """(..., i, j) differences ``q_pos[..., a] - k_pos[..., b]`` (query minus key)."""
    return rearrange(q_pos, "... i -> ... i 1") - rearrange(k_pos, "... j -> ... 1 j")


def heads_first(values: Tensor, layout_ndim: int) -> Tensor:
    """Per-pair values of every head ``(..., i, j, h)`` -> the bias with heads in front.

    ``layout_ndim`` is the ndim of the positions the pairs came from (1, 2 or 3, see the
    module docstring); with per-head positions each head keeps only its own pairs.
    """
    if layout_ndim == 1:
        return rearrange(values, "i j h -> h i j")
    if layout_ndim == 2:
        return rearrange(values, "b i j h -> b h i j")
    own = values.diagonal(dim1=1, dim2=-1)  # (b, h_pos, i, j, h) -> (b, i, j, h)
    return rearrange(own, "b i j h -> b h i j")
