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

The common case (self-attention over one span, no bias, user mask, free keys or global tokens;
key padding allowed) takes a banded path with no per-block Python loop: the queries are
reshaped into blocks, each block's reachable keys are cut from the sequence with one ``unfold``
(a block and its neighbours), and one SDPA call covers a chunk of ``CHUNK`` queries' blocks,
with one (block, keys) mask per block built from the rules. With gradients, an autograd
function saves only q, k and v and recomputes each chunk in backward, so the memory beyond
what full SDPA keeps is one chunk's working set (its unfolded keys, mask and SDPA state), not
a copy of k and v per neighbouring block; the time is one more forward of the band.

Shape legend: b batch, h heads, i queries, j keys (f free + p positional), t blocks, r rows of
a block, c columns of a block, dh head dim, dv value dim, d either of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from x_attn.kernels.inputs import AttnInputs, expand_kv_heads
from x_attn.kernels.sdpa import sdpa_attention, sdpa_masked
from x_attn.masks.spec import AttnMask
from x_attn.masks.window import SlidingWindow

MIN_BLOCK = 64  # queries per block at least (a block of one query per window would loop n times)
CHUNK = 512  # queries per banded call (rounded down to whole blocks, at least one block)


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
    size = max(MIN_BLOCK, rule.back + rule.forward + 1)
    if _bandable(inputs, rule):
        return _banded(inputs, k, v, rule, size)
    glob_cols = _global_columns(rule, key_pos, spec.free)
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


def _bandable(inputs: AttnInputs, rule: SlidingWindow) -> bool:
    """Whether the call is one span attending to itself with nothing the banded path lacks."""
    spec = inputs.spec
    plain = spec.free == 0 and not spec.pinned and spec.user is None and inputs.bias is None
    return plain and spec.q == spec.k and not rule.has_globals


def _banded(inputs: AttnInputs, k: Tensor, v: Tensor, rule: SlidingWindow, size: int) -> Tensor:
    """Every block of ``size`` queries against its reachable keys, ``CHUNK`` queries per call.

    Block t holds queries t*B .. t*B + B - 1 and the keys from ``before`` blocks earlier to
    ``after`` blocks later (at most one each: B covers the window's reach). Without gradients
    the chunks are computed one after another; with them, :class:`_RecomputedBand` keeps only
    q, k and v for backward and recomputes each chunk there. Attention dropout (whose draws a
    recompute would have to replay) and tracing under ``torch.compile`` take a single call
    over every block, with autograd keeping that call's unfolded keys and mask instead.
    """
    q = inputs.q
    n = q.shape[-2]
    size = min(size, n)  # one block of every query when the sequence is shorter than a block
    blocks = math.ceil(n / size)
    reach = (math.ceil(rule.back / size), math.ceil(rule.forward / size))
    band = _Band(size, *(min(r, blocks - 1) for r in reach), n)
    if not (torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))):
        return _band_chunks(inputs, band, q, k, v)
    if inputs.dropout > 0 or torch.compiler.is_compiling():
        return _band_chunk(inputs, band, 0, q, k, v)
    return _RecomputedBand.apply(inputs, band, q, k, v)


@dataclass(frozen=True)
class _Band:
    """Block size B, the blocks a block reaches before / after it (0 or 1 each), length n."""

    size: int
    before: int
    after: int
    length: int

    @property
    def width(self) -> int:
        """Key columns of a block: its own B keys and those of the blocks it reaches."""
        return (self.before + 1 + self.after) * self.size

    def chunks(self) -> list[tuple[int, int, int, int]]:
        """(first query, end of queries, first key, end of keys) of each chunk of blocks."""
        span, n = max(1, CHUNK // self.size) * self.size, self.length
        out = []
        for start in range(0, n, span):
            stop = min(start + span, n)
            keys_end = start + math.ceil((stop - start) / self.size) * self.size
            keys_end += self.after * self.size
            out.append((start, stop, max(start - self.before * self.size, 0), min(keys_end, n)))
        return out


class _RecomputedBand(torch.autograd.Function):
    """The banded chunks, saving only q, k and v: backward recomputes one chunk at a time (its
    unfolded keys, mask and SDPA state) and adds its gradients into dq, dk and dv, so the
    working set of either pass is one chunk, at the price of a second forward of each."""

    @staticmethod
    def forward(ctx, inputs: AttnInputs, band: _Band, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        ctx.inputs, ctx.band = inputs, band
        ctx.save_for_backward(q, k, v)
        return _band_chunks(inputs, band, q, k, v)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, None, Tensor, Tensor, Tensor]:
        q, k, v = ctx.saved_tensors
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for start, stop, lo, hi in ctx.band.chunks():
            rows, cols = slice(start, stop), slice(lo, hi)
            with torch.enable_grad():
                parts = [
                    x[:, :, s].detach().requires_grad_()
                    for x, s in zip((q, k, v), (rows, cols, cols))
                ]
                out = _band_chunk(ctx.inputs, ctx.band, start, *parts)
                # a scalar, not grad_outputs: passing those makes autograd import sympy (~50 MiB)
                got = torch.autograd.grad((out * grad[:, :, rows]).sum(), parts)
            dq[:, :, rows] += got[0]
            dk[:, :, cols] += got[1]
            dv[:, :, cols] += got[2]
        return None, None, dq, dk, dv


def _band_chunks(inputs: AttnInputs, band: _Band, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The output of every chunk, computed one after another into one tensor (no gradients
    flow here: the inputs need none, or autograd is off inside :class:`_RecomputedBand`)."""
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    for start, stop, lo, hi in band.chunks():
        chunk = (q[:, :, start:stop], k[:, :, lo:hi], v[:, :, lo:hi])
        out[:, :, start:stop] = _band_chunk(inputs, band, start, *chunk)
    return out


def _band_chunk(
    inputs: AttnInputs, band: _Band, start: int, q: Tensor, k: Tensor, v: Tensor
) -> Tensor:
    """Queries ``start ... start + len(q) - 1`` against the keys their blocks reach.

    ``k``/``v`` hold the keys of positions ``start - before * B`` to the end of the last
    block plus ``after * B``, clipped to the sequence; zeros stand in for the clipped ones
    (the mask hides them).
    """
    spec, size = inputs.spec, band.size
    rows, device = q.shape[-2], q.device
    blocks = math.ceil(rows / size)
    first = start - band.before * size  # position of the first key column
    cols = (blocks - 1) * size + band.width
    grow = (max(-first, 0), cols - max(-first, 0) - k.shape[-2])  # zeros before / after
    qb = rearrange(F.pad(q, (0, 0, 0, blocks * size - rows)), "b h (t r) d -> (b t) h r d", r=size)
    kb, vb = (
        rearrange(F.pad(x, (0, 0, *grow)).unfold(2, band.width, size), "b h t d c -> (b t) h c d")
        for x in (k, v)
    )
    mask = _band_mask(spec, band, start // size, blocks, device)  # (t, r, c)
    mask = mask.unsqueeze(0).expand(q.shape[0], -1, -1, -1)  # (b, t, r, c)
    if spec.key_padding is not None:  # the chunk's key columns, padded as the keys are
        real = F.pad(spec.key_padding.to(device), (band.before * size, cols))
        real = real[:, start : start + cols].unfold(1, band.width, size)
        mask = mask & real.unsqueeze(2)
    mask = rearrange(mask, "b t r c -> (b t) 1 r c")
    out = sdpa_masked(qb, kb, vb, mask, None, inputs.scale, inputs.dropout)
    return rearrange(out, "(b t) h r d -> b h (t r) d", b=q.shape[0])[:, :, :rows]


def _band_mask(
    spec: AttnMask, band: _Band, first: int, blocks: int, device: torch.device
) -> Tensor:
    """(t, r, c) bool: the rules over the queries of blocks ``first ...`` and their key
    columns (real keys only)."""
    size, width = band.size, band.width
    start = (first + torch.arange(blocks, device=device)) * size
    q_off = start[:, None] + torch.arange(size, device=device)  # (t, r) offsets in the span
    k_off = start[:, None] - band.before * size + torch.arange(width, device=device)  # (t, c)
    real = ((k_off >= 0) & (k_off < len(spec.k))).unsqueeze(1)  # (t, 1, c)
    q_pos = spec.q.start + q_off.unsqueeze(-1)
    grid = spec.rules_allow(q_pos, lambda: spec.k.start + k_off.unsqueeze(1))
    return real if grid is None else real & grid


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
