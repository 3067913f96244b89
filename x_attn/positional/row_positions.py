"""Padding takes no position: each row numbers its real positions 0, 1, 2, ...

A key's position is the number of real (unmasked) positions before it in its row, so padding
(left, inside, or between memory tokens and the text) changes nothing for the real tokens: a
left-padded row of a batch computes what it computes alone, memory tokens keep their distance
to the first real token, and a Transformer-XL segment continues after the real rows of its
memory. Rows whose real positions are all ``start + arange`` share one set of positional tables;
otherwise the stack builds per-row tables from these positions.

Shape legend: b batch, p positions held by a cache, r new rows (memories + inputs),
k = p + r positions covered by a forward's tables.
"""

from __future__ import annotations

import torch
from torch import Tensor


def counted_positions(mask: Tensor, real_before: Tensor | int) -> Tensor:
    """(b, k) position of each row of ``mask`` (b, k): real rows before it + ``real_before``.

    A padded row is never read as a key (it is masked) and a padded query's output is
    discarded; it takes the index it would have if only the pads before the latest real row
    were removed, so trailing pads (right padding) keep their plain positions.
    """
    pads = (~mask).long().cumsum(-1)
    shift = torch.where(mask, pads, 0).cummax(dim=-1).values  # pads before the latest real row
    if isinstance(real_before, Tensor):
        real_before = real_before.unsqueeze(-1)
    return torch.arange(mask.shape[-1], device=mask.device) - shift + real_before


def row_positions(
    span: tuple[int, int, int],
    held_mask: Tensor | None,
    held_real: Tensor | None,
    new_mask: Tensor | None,
    b: int,
    device: torch.device,
) -> tuple[Tensor | None, Tensor | None]:
    """Per-row positions of the absolute positions ``start ... stop - 1`` of one forward.

    Args:
        span: (start, past, stop): the oldest position a cache holds, the first new row and one
            past the newest.
        held_mask: (b, past - start) padding of the held keys (True = real), or None.
        held_real: (b,) real positions among ``0 ... past - 1``, or None when all were real.
        new_mask: (b, stop - past) padding of the new rows, or None.

    Returns:
        (positions (b, stop - start) or None when every row's real positions are the absolute
        ones, real positions per row after this forward or None when all are real).
    """
    start, past, stop = span
    if held_mask is None and held_real is None and new_mask is None:
        return None, None
    held = _or_ones(held_mask, b, past - start, device)
    new = _or_ones(new_mask, b, stop - past, device)
    real_past = held_real if held_real is not None else torch.full((b,), past, device=device)
    mask = torch.cat((held, new), dim=-1)
    positions = counted_positions(mask, real_past - held.sum(-1))
    real_after = real_past + new.sum(-1)
    if bool((real_after == stop).all()):
        real_after = None
    if bool((positions == torch.arange(start, stop, device=device)).all()):
        positions = None
    return positions, real_after


def _or_ones(mask: Tensor | None, b: int, n: int, device: torch.device) -> Tensor:
    return torch.ones(b, n, dtype=torch.bool, device=device) if mask is None else mask


def left_padding(
    mask: Tensor | None, seq_start_pos: Tensor | None, before: int, n: int
) -> Tensor | None:
    """``mask`` (b, n) with the inputs before each row's ``seq_start_pos`` masked as padding.

    ``before`` inputs of the sequence came in earlier calls; ``seq_start_pos`` (b,) indexes
    the whole sequence (as in x-transformers). None when neither is given.
    """
    if seq_start_pos is None:
        return mask
    index = torch.arange(before, before + n, device=seq_start_pos.device)
    real = index >= seq_start_pos.unsqueeze(-1)
    return real if mask is None else mask & real.to(mask.device)


def rows_mask(
    mem_mask: Tensor | None, mask: Tensor | None, mem_len: int, x: Tensor
) -> Tensor | None:
    """(b, m + n) padding of a forward's new rows [memories; x], or None when all are real."""
    if mem_mask is None and mask is None:
        return None
    b, n = x.shape[:2]
    mem = mem_mask if mem_mask is not None else x.new_ones(b, mem_len, dtype=torch.bool)
    cur = mask if mask is not None else x.new_ones(b, n, dtype=torch.bool)
    return torch.cat((mem, cur), dim=1)
