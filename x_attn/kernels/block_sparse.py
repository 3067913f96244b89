"""Block-sparse attention for gathered patterns (Sparse Transformer 1904.10509, BigBird 2007.14062).

The pattern rule (:class:`x_attn.masks.sparse.BlockPattern`) cuts the allowed (query, key)
pairs into groups: query rows and the key columns they need, gathered with ``index_select``
(the free keys, memory key/values, join the first part's groups). Each group is one small
softmax over its gathered keys, its mask read from the mask description
(:meth:`x_attn.masks.spec.AttnMask.block`: causality, padding, a user mask and any other rule
hold exactly as in the dense reference) and its bias from the same rows and columns; no
(i, j) mask is ever formed. A pattern with several parts (strided: a band and residue columns)
computes each part's output with its log-sum-exp and merges them as one softmax over the union
(the parts never share a pair). When the rule hides nothing here (a pattern covering the
whole sequence) this is plain SDPA, so it equals full attention exactly.

Scores are formed in float32 for half-precision inputs; a query with no allowed key returns
zeros.

Shape legend: b batch, h heads, i queries, j keys (f free + p positional), r rows of a group,
c columns of a group, dh head dim, dv value dim, P parts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from x_attn.kernels.inputs import AttnInputs, expand_kv_heads
from x_attn.kernels.sdpa import sdpa_attention
from x_attn.masks.sparse import BlockPattern, Group
from x_attn.utils import compute_dtype


def block_sparse_attention(inputs: AttnInputs) -> Tensor:
    """Attention of ``inputs`` under its block pattern rule, block by block; (b, h, i, dv)."""
    spec = inputs.spec
    active = spec.active_rules()
    rule = next((r for r in active if isinstance(r, BlockPattern)), None)
    if rule is None or len(spec.q) == 0:  # the pattern hides nothing here: full attention
        return sdpa_attention(inputs)
    if spec.pinned:
        raise AssertionError("block-sparse attention reads one contiguous span of keys")
    causal = any(r.kind == "causal" for r in active)
    q = inputs.q
    k, v = expand_kv_heads(inputs.k, q.shape[1]), expand_kv_heads(inputs.v, q.shape[1])
    outs, lses = [], []
    for index, part in enumerate(rule.parts(spec.q, spec.k, causal)):
        out, lse = _part(inputs, k, v, part, with_free=index == 0)
        outs.append(out)
        lses.append(lse)
    if len(outs) == 1:
        return outs[0]
    return _merge(torch.stack(outs), torch.stack(lses))


def _part(
    inputs: AttnInputs, k: Tensor, v: Tensor, groups: list[Group], with_free: bool
) -> tuple[Tensor, Tensor]:
    """One part's output (b, h, i, dv) and log-sum-exp (b, h, i) (-inf where it sees nothing)."""
    spec, q = inputs.spec, inputs.q
    b, h, i = q.shape[0], q.shape[1], q.shape[2]
    free = torch.arange(spec.free if with_free else 0, device=q.device)
    rows_all, outs, lses = [], [], []
    for group in groups:
        rows = (group.rows - spec.q.start).to(q.device)
        cols = torch.cat((free, (group.cols - spec.k.start).to(q.device) + spec.free))
        keep = group.keep
        if keep is not None:  # the free keys belong to this group
            keep = F.pad(keep.to(q.device), (len(free), 0), value=True)
        out, lse = _attend(inputs, k, v, rows, cols, keep)
        rows_all.append(rows)
        outs.append(out)
        lses.append(lse)
    out = q.new_zeros(b, h, i, v.shape[-1])
    lse = torch.full((b, h, i), float("-inf"), dtype=compute_dtype(q.dtype), device=q.device)
    if rows_all:
        rows = torch.cat(rows_all)
        out = out.index_copy(2, rows, torch.cat(outs, dim=2).to(out.dtype))
        lse = lse.index_copy(2, rows, torch.cat(lses, dim=2))
    return out, lse


def _attend(
    inputs: AttnInputs, k: Tensor, v: Tensor, rows: Tensor, cols: Tensor, keep: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Softmax attention of query rows ``rows`` over key columns ``cols``: (out, lse)."""
    mask = inputs.spec.block(rows, cols)
    if keep is not None:
        mask = keep if mask is None else mask & keep
    compute = compute_dtype(inputs.q.dtype)
    q = inputs.q.index_select(2, rows).to(compute)
    k, v = k.index_select(2, cols).to(compute), v.index_select(2, cols)
    with torch.autocast(q.device.type, enabled=False):
        sim = (q @ k.transpose(-1, -2)) * inputs.scale
        bias = inputs.bias
        if bias is not None:
            bias = bias if bias.shape[-2] == 1 else bias.index_select(-2, rows)
            bias = bias if bias.shape[-1] == 1 else bias.index_select(-1, cols)
            sim = sim + bias.to(compute)
        if mask is None:
            mask = torch.ones(sim.shape[-2:], dtype=torch.bool, device=sim.device)
        mask = mask.expand_as(sim)
        seen = mask.any(dim=-1)
        sim = sim.masked_fill(~mask, float("-inf")).masked_fill(~seen.unsqueeze(-1), 0.0)
        lse = torch.logsumexp(sim, dim=-1)
        attn = torch.exp(sim - lse.unsqueeze(-1)).masked_fill(~mask, 0.0)
    if inputs.dropout > 0:
        attn = F.dropout(attn, inputs.dropout)
    out = attn.to(v.dtype) @ v
    return out, lse.masked_fill(~seen, float("-inf"))


def _merge(outs: Tensor, lses: Tensor) -> Tensor:
    """One softmax over the union of the parts: outs (P, b, h, i, dv), lses (P, b, h, i)."""
    top = lses.max(dim=0).values
    top = top.masked_fill(torch.isinf(top), 0.0)  # rows no part sees: every weight 0
    weights = torch.exp(lses - top)
    total = weights.sum(dim=0)
    total = total + (total == 0).to(total.dtype)  # no division by zero (their outputs are 0)
    mixed = (weights.unsqueeze(-1) * outs.to(weights.dtype)).sum(dim=0)
    return (mixed / total.unsqueeze(-1)).to(outs.dtype)
