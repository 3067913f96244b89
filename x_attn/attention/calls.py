"""What one attention call attends with: the new key rows, the entry that holds keys, the queries.

Self-attention and cross-attention differ only here: self-attention keys are the layer's input
(after any Transformer-XL memory) at absolute positions, with the layer's mask rules and the
stack's positional tables; a cross-attention context has no positions, no rules and no bias.

Shape legend: b batch, n queries, m memory rows, j context length, d model dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from x_attn.cache.entry import CacheEntry, KeyRows
from x_attn.masks.spec import MaskRule, Span
from x_attn.positional.context import NO_POSITIONS, PositionContext, RowPositions

_NO_TABLES = PositionContext(0, 0)


@dataclass(slots=True)
class AttendCall:
    """The inputs of one attention call, resolved.

    Attributes:
        keys: the new key/value rows, for the layer's cache entry.
        entry: the entry that holds this layer's keys (a fresh one without a cache).
        queries: absolute positions of the queries.
        query_rows: positional tables of the queries, for the projection.
        rules: mask rules over (query, key) positions.
        user_mask: the caller's bool mask (right-aligned on the keys), or None.
        positions: where the bias of (queries, held keys) comes from.
    """

    keys: KeyRows
    entry: CacheEntry
    queries: Span
    query_rows: RowPositions
    rules: tuple[MaskRule, ...]
    user_mask: Tensor | None
    positions: PositionContext


def real_rows(rows: Tensor, mask: Tensor | None) -> Tensor:
    """Key/value rows (b, j, d) with the masked ones zeroed.

    A masked key gets probability 0, but 0 * NaN is NaN: whatever a masked row holds (a NaN
    in a padded context, an inf) must not reach a real output, so it enters as zeros.
    """
    return rows if mask is None else rows.masked_fill(~mask.unsqueeze(-1), 0.0)


def self_call(
    x: Tensor,
    mem: Tensor | None,
    mem_mask: Tensor | None,
    mask: Tensor | None,
    attn_mask: Tensor | None,
    positions: PositionContext | None,
    entry: CacheEntry,
    rules: tuple[MaskRule, ...],
    global_mask: Tensor | None = None,
) -> AttendCall:
    """Self-attention: keys from [mem; x] at the newest positions, queries from x.

    ``global_mask`` (b, n): global tokens of ``x`` (memory rows are never global); the rules
    that take global tokens get them for this call.
    """
    rows = x if mem is None else torch.cat((mem, x), dim=1)
    n, j = x.shape[1], rows.shape[1]
    if positions is None:  # a layer called on its own: continue after what its entry holds
        positions = PositionContext(n, j, start=entry.next_position())
    stop = positions.start + positions.k_len
    new, queries = Span(stop - j, stop), Span(stop - n, stop)
    if j > n and (mask is not None or mem_mask is not None):  # the padding of [mem; x]
        mem_mask = (
            mem_mask if mem_mask is not None else x.new_ones(x.shape[0], j - n, dtype=torch.bool)
        )
        mask = mask if mask is not None else x.new_ones(x.shape[0], n, dtype=torch.bool)
        mask = torch.cat((mem_mask, mask), dim=1)
    rules = tuple(rule.for_length(stop) for rule in rules)
    if global_mask is not None:
        marked = torch.cat((global_mask.new_zeros(global_mask.shape[0], j - n), global_mask), 1)
        rules = tuple(rule.with_global_tokens(new, marked) for rule in rules)
    keys = KeyRows(real_rows(rows, mask), new, mask, positions.rows(new, key=True))
    return AttendCall(keys, entry, queries, positions.rows(queries), rules, attn_mask, positions)


def cross_call(
    x: Tensor,
    context: Tensor,
    context_mask: Tensor | None,
    attn_mask: Tensor | None,
    entry: CacheEntry,
    positions: PositionContext | None = None,
) -> AttendCall:
    """Cross-attention: keys from the context (no rules, no bias).

    Neither side has positions, unless the stack was given ``context_pos``: then the context
    keys and the queries are rotated at their positions (rotary embeddings only).
    """
    key_rows = query_rows = NO_POSITIONS
    if positions is not None and positions.context_rotary is not None:
        key_rows = positions.context_rows()
        query_rows = positions.rows(positions.queries)
    rows = real_rows(context, context_mask)
    keys = KeyRows(rows, Span(0, context.shape[1]), context_mask, key_rows)
    queries = Span(0, x.shape[1])
    return AttendCall(keys, entry, queries, query_rows, (), attn_mask, _NO_TABLES)
