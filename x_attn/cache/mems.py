"""Transformer-XL memories together with their padding.

Transformer-XL: Attentive Language Models Beyond a Fixed-Length Context (Dai et al.,
arXiv 1901.02860). A model called with ``return_mems=True`` returns the input of each
self-attention layer for the next segment. When the segment was padded, the padded rows must
stay invisible there too: :class:`Mems` is the list of per-layer tensors (so code written for
a plain list keeps working) that also carries their padding mask. A plain list of tensors
passed as ``mems`` means every row is real.

Shape legend: b batch, m memory length, d model dim.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


class Mems(list):
    """One (b, m, d) tensor per self-attention layer, and their padding.

    Attributes:
        mask: (b, m) bool, True = real row, or None when every row is real.
    """

    def __init__(self, tensors: Iterable[Tensor] = (), mask: Tensor | None = None) -> None:
        super().__init__(tensors)
        self.mask = mask

    def __repr__(self) -> str:
        shapes = ", ".join(str(tuple(t.shape)) for t in self)
        padded = "no padding" if self.mask is None else f"mask {tuple(self.mask.shape)}"
        return f"Mems([{shapes}], {padded})"


def mems_mask(mems: list[Tensor] | None) -> Tensor | None:
    """The padding mask ``mems`` carries (None for a plain list: every row is real)."""
    return getattr(mems, "mask", None) if mems is not None else None


def next_mems(
    hiddens: list[Tensor], mems: list[Tensor] | None, mask: Tensor | None, max_mem_len: int
) -> Mems:
    """The mems after a segment: old mems + its layer inputs, detached, the last max_mem_len.

    Args:
        hiddens: the segment's input of each self-attention layer, (b, n, d) each.
        mems: the mems the segment attended to, or None.
        mask: (b, n) padding of the segment's rows, or None.
        max_mem_len: rows to keep (0: keep everything).
    """
    old_mask = mems_mask(mems)
    if old_mask is not None or (mask is not None and mems is not None):
        b, m = hiddens[0].shape[0], 0 if mems is None else mems[0].shape[1]
        ones = hiddens[0].new_ones(b, m + hiddens[0].shape[1], dtype=torch.bool)
        old = old_mask if old_mask is not None else ones[:, :m]
        mask = torch.cat((old, mask if mask is not None else ones[:, m:]), dim=1)
    if mems is not None:
        hiddens = [torch.cat((m, h), dim=1) for m, h in zip(mems, hiddens)]
    keep = max_mem_len if max_mem_len > 0 else hiddens[0].shape[1]
    kept = None if mask is None else mask[:, -keep:]
    return Mems([h[:, -keep:].detach() for h in hiddens], kept)
