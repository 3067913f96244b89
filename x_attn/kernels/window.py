"""Blockwise sliding-window attention (Longformer, arXiv 2004.05150): O(n w), SDPA per block.

The queries are cut into blocks of ``B`` consecutive positions. A block attends to the keys
its window can reach (from ``w - 1`` dilated steps before its first query to the same reach
after its last one, or nothing after when causal), plus the free keys (memory key/values) and
the global keys outside that range; each block's mask comes from the mask description
(:meth:`x_attn.masks.spec.AttnMask.block`), so causality, padding, a user mask and global
tokens hold exactly as in the dense reference, while no (i, j) mask is ever formed. Queries
that are global tokens attend to every key: their rows are computed once more against all
keys (O(g n) for g global tokens) and replace the windowed ones in the batch rows where they
are global. When the window hides nothing (it covers the whole sequence, or a decode step
sees only its window) this is plain SDPA, so it equals full attention exactly.

Shape legend: b batch, h heads, i queries, j keys (f free + p positional), r rows of a block,
c columns of a block, dh head dim, dv value dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from x_attn.kernels.inputs import AttnInputs, expand_kv_heads
from x_attn.kernels.sdpa import sdpa_attention, sdpa_masked
from x_attn.masks.spec import AttnMask
from x_attn.masks.window import SlidingWindow

MIN_BLOCK = 64  # queries per block at least (a block of one query per window would loop n times)


def window_attention(inputs: AttnInputs) -> Tensor:
    """Sliding-window attention of ``inputs`` (whose mask has a window rule); (b, h, i, dv)."""
    spec = inputs.spec
    rule = next((r for r in spec.active_rules() if isinstance(r, SlidingWindow)), None)
    if rule is None:  # the window hides nothing here: full attention
        return sdpa_attention(inputs)
    q = inputs.q
    k, v = expand_kv_heads(inputs.k, q.shape[1]), expand_kv_heads(inputs.v, q.shape[1])
    device, i = q.device, q.shape[-2]
    key_pos = spec.key_positions(device)
    query_pos = spec.q.arange(device)
    glob_cols = _global_columns(rule, key_pos, spec.free)
    size = max(MIN_BLOCK, rule.back + rule.forward + 1)
    outs = []
    for a in range(0, i, size):
        rows = torch.arange(a, min(a + size, i), device=device)
        lo, hi = _key_range(spec, key_pos, query_pos, (a, int(rows.numel()) - 1 + a), rule)
        far = glob_cols[(glob_cols < lo + spec.free) | (glob_cols >= hi + spec.free)]
        free = torch.arange(spec.free, device=device)
        local = torch.arange(lo + spec.free, hi + spec.free, device=device)
        outs.append(_attend(inputs, k, v, rows, torch.cat((free, far, local))))
    out = torch.cat(outs, dim=2)
    return _global_rows(inputs, k, v, rule, query_pos, out)


def _key_range(
    spec: AttnMask, key_pos: Tensor, query_pos: Tensor, first_last: tuple[int, int], rule
) -> tuple[int, int]:
    """[lo, hi): the positional keys (indices into ``key_pos``) that queries ``first ... last``
    can reach. Without pinned keys the keys are the span ``k.start ... k.stop - 1``, so the
    bounds are arithmetic on Python ints (no value read back from a tensor: this is what lets
    the kernel trace under ``torch.compile(fullgraph=True)``); else a sorted search."""
    first, last = first_last
    if not spec.pinned:
        start, length = spec.k.start, spec.k.stop - spec.k.start
        lo = spec.q.start + first - rule.back - start
        hi = spec.q.start + last + rule.forward - start + 1
        return min(max(lo, 0), length), min(max(hi, 0), length)
    lo = int(torch.searchsorted(key_pos, query_pos[first] - rule.back))
    hi = int(torch.searchsorted(key_pos, query_pos[last] + rule.forward, right=True))
    return lo, hi


def _global_columns(rule: SlidingWindow, key_pos: Tensor, free: int) -> Tensor:
    """Column indices (over f + p keys) of keys that are global in some batch row."""
    marks = rule.global_marks(key_pos)
    if marks is None:
        return torch.zeros(0, dtype=torch.long, device=key_pos.device)
    return marks.any(dim=0).nonzero().flatten() + free


def _global_rows(
    inputs: AttnInputs, k: Tensor, v: Tensor, rule: SlidingWindow, query_pos: Tensor, out: Tensor
) -> Tensor:
    """``out`` with the rows of global queries attending to every key (where they are global)."""
    marks = rule.global_marks(query_pos)
    if marks is None or not marks.any():
        return out
    rows = marks.any(dim=0).nonzero().flatten()
    every = torch.arange(k.shape[-2], device=k.device)
    full = _attend(inputs, k, v, rows, every)
    chosen = marks[:, rows].reshape(marks.shape[0], 1, -1, 1)
    return out.index_copy(2, rows, torch.where(chosen, full, out[:, :, rows]))


def _attend(inputs: AttnInputs, k: Tensor, v: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """SDPA of query rows ``rows`` over key columns ``cols``, with the mask of that block."""
    spec: AttnMask = inputs.spec
    mask = spec.block(rows, cols)
    bias = inputs.bias
    if bias is not None:
        bias = bias if bias.shape[-2] == 1 else bias.index_select(-2, rows)
        bias = bias if bias.shape[-1] == 1 else bias.index_select(-1, cols)
    q = inputs.q.index_select(2, rows)
    k, v = k.index_select(2, cols), v.index_select(2, cols)
    return sdpa_masked(q, k, v, mask, bias, inputs.scale, inputs.dropout)
