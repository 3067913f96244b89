"""Linear attention kernels: "Transformers are RNNs" (Katharopoulos et al., arXiv 2006.16236).

The layer's projection has already applied a positive feature map phi to queries and keys
(elu + 1, or Performer's random features), so q is phi(Q) and k is phi(K). Query i attends
with

    out_i = phi(q_i)^T S_i / phi(q_i)^T z_i,   S_i = sum_j phi(k_j) v_j^T,  z_i = sum_j phi(k_j)

over the keys j it sees: all of them (non-causal, O(n m dv)), or j <= i (causal). The causal
form runs chunkwise-parallel: within a chunk of ``chunk`` positions the masked quadratic form
tril(phi(Q_c) phi(K_c)^T) V_c, across chunks the exclusive prefix sums of the per-chunk (S, z);
memory O(n c + (n / c) m dv), taken SPAN positions at a time (the sums carried between
spans), so no intermediate grows with the whole sequence. It equals the recurrent form
S <- S + phi(k_t) v_t^T (tested).

Padding is removed in feature space: a padded key's phi(k) row and v row are zeroed (a zero key
is not a masked key, since elu(0) + 1 = 1). Keys without a position (learned memory key/values)
and keys before the queries' block (Transformer-XL memories) are visible to every query: they
start the prefix sums. A layer's :class:`x_attn.cache.state.StateEntry` brings the sums of
earlier calls and takes the sums after this one (decoding: one rank-1 update per token). No
epsilon: a row whose denominator is 0 sees no key and returns zeros. Sums run in float32 for
half-precision inputs.

Shape legend: b batch, h heads, i queries, j keys, m feature dim, dv value dim, c chunks,
t / s positions within a chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

from x_attn.cache.entry import CacheEntry
from x_attn.cache.state import StateEntry, find_state
from x_attn.kernels.inputs import AttnInputs, expand_kv_heads, merged_mask
from x_attn.kernels.manual import AttnMaps
from x_attn.utils import compute_dtype

State = tuple[Tensor, Tensor]
SPAN = 1024  # positions per step of the causal scan (rounded to whole chunks)


def linear_attention(inputs: AttnInputs, entry: CacheEntry | None) -> Tensor:
    """(b, h, i, dv): linear attention of the feature-mapped ``inputs`` (see module docstring)."""
    found = find_state(entry)
    q, free, pos = _prepared(inputs)
    prior = _prior(found, q, pos[1])
    start = _plus(prior, _sums(*free))
    if _is_causal(inputs):
        before = pos[0].shape[-2] - q.shape[-2]  # keys older than the queries: all visible
        start = _plus(start, _sums(pos[0][..., :before, :], pos[1][..., :before, :]))
        chunk = found.chunk if found is not None else 64
        out = _causal(q, pos[0][..., before:, :], pos[1][..., before:, :], start, chunk)
    else:
        s, z = _plus(start, _sums(*pos))
        out = _ratio(einsum(q, s, "b h i m, b h m d -> b h i d"), q @ z.unsqueeze(-1))
    _store(found, prior, pos)
    return out.to(inputs.v.dtype)


def linear_attention_maps(inputs: AttnInputs, entry: CacheEntry | None) -> tuple[Tensor, AttnMaps]:
    """The same function through its implied (b, h, i, j) attention matrix (return_attn).

    weights_ij = phi(q_i) . phi(k_j) over the keys i sees, divided by their row sum; ``logits``
    holds the unnormalised kernel values phi(q_i) . phi(k_j) (there is no softmax).
    """
    found = find_state(entry)
    if found is not None and found.state is not None:
        raise ValueError(
            "return_attn=True with a filled cache: linear attention keeps the sum of the earlier "
            "keys, not the keys, so their weights cannot be formed; call without the cache"
        )
    q, free, pos = _prepared(inputs)
    k = torch.cat((free[0], pos[0]), dim=-2)
    v = torch.cat((free[1], pos[1]), dim=-2)
    kernel = einsum(q, k, "b h i m, b h j m -> b h i j")
    mask = merged_mask(inputs)
    weights = kernel if mask is None else kernel.masked_fill(~mask, 0.0)
    probs = _ratio(weights, weights.sum(-1, keepdim=True))
    _store(found, None, pos)
    out = einsum(probs, v, "b h i j, b h j d -> b h i d")
    return out.to(inputs.v.dtype), AttnMaps(logits=kernel, probs=probs)


def _prepared(inputs: AttnInputs) -> tuple[Tensor, State, State]:
    """q (b h i m), (free k, v), (positional k, v): heads expanded, padded keys zeroed."""
    _check(inputs)
    q = inputs.q
    compute = compute_dtype(q.dtype)
    k = expand_kv_heads(inputs.k, q.shape[1]).to(compute)
    v = expand_kv_heads(inputs.v, q.shape[1]).to(compute)
    n = inputs.spec.free
    kp, vp = k[..., n:, :], v[..., n:, :]
    padding = inputs.spec.key_padding
    if padding is not None:  # in feature space: phi(k) of a padded key becomes 0, not phi(0)
        real = rearrange(padding, "b j -> b 1 j 1")
        kp, vp = kp.masked_fill(~real, 0.0), vp.masked_fill(~real, 0.0)
    return q.to(compute), (k[..., :n, :], v[..., :n, :]), (kp, vp)


def _check(inputs: AttnInputs) -> None:
    spec = inputs.spec
    if spec.user is not None:
        raise ValueError(
            "attn_mask: linear attention forms no attention matrix, so it cannot apply an "
            "arbitrary mask (only causality and key padding); pass mask= for padding"
        )
    assert inputs.bias is None, "a position bias is refused at construction (kernel need)"
    assert inputs.dropout == 0.0, "attention dropout is refused at construction"
    kinds = {rule.kind for rule in spec.active_rules()}
    assert kinds <= {"causal"}, f"mask rules {kinds} reach the linear kernel"


def _is_causal(inputs: AttnInputs) -> bool:
    spec = inputs.spec
    causal = any(rule.kind == "causal" for rule in spec.active_rules())
    assert not causal or spec.q.stop == spec.k.stop, "causal queries are the newest keys"
    return causal


def _sums(k: Tensor, v: Tensor) -> State:
    """(S (b h m dv), z (b h m)) of the keys ``k`` (b h j m) with values ``v``."""
    return einsum(k, v, "b h j m, b h j d -> b h m d"), k.sum(-2)


def _plus(a: State, b: State) -> State:
    return a[0] + b[0], a[1] + b[1]


def _prior(found: StateEntry | None, q: Tensor, v: Tensor) -> State:
    """The sums of earlier calls, or zeros."""
    if found is not None and found.state is not None:
        s, z = found.state
        return s.to(q.dtype), z.to(q.dtype)
    b, h, _, m = q.shape
    zeros = q.new_zeros(b, h, m, v.shape[-1])
    return zeros, zeros[..., 0]


def _store(found: StateEntry | None, prior: State | None, pos: State) -> None:
    """Hand the entry the sums over every positional key seen so far (free keys excluded)."""
    if found is None:
        return
    sums = _sums(*pos)
    found.store(sums if prior is None else _plus(prior, sums))


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den; 0 where den is 0 (then num is 0 too: features are non-negative)."""
    return num / den.masked_fill(den == 0, 1.0)


def _causal(q: Tensor, k: Tensor, v: Tensor, start: State, chunk: int) -> Tensor:
    """Causal linear attention of the aligned q/k/v (b h n *) after the sums ``start``.

    The positions are taken ``SPAN`` (whole chunks) at a time, the sums carried from one span
    to the next, so every intermediate (the per-chunk sums above all) has the size of one
    span, not of the sequence: the work stays O(n), and so does the memory traffic, with no
    n-sized buffer the C allocator must map and fault in afresh at every call.
    """
    span = chunk * max(1, SPAN // chunk)
    outs = []
    # split, not slices: autograd joins the spans' gradients once (a slice's backward would
    # write each span's gradient into a zeroed copy of the whole sequence)
    for parts in zip(*(t.split(span, dim=-2) for t in (q, k, v))):
        out, start = _causal_span(*parts, start, chunk)
        outs.append(out)
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)


def _causal_span(q: Tensor, k: Tensor, v: Tensor, start: State, chunk: int) -> tuple[Tensor, State]:
    """(out, sums after the span) of the aligned q/k/v (b h n *) after the sums ``start``."""
    n = q.shape[-2]
    pad = (-n) % chunk  # zero features: the padded positions add nothing and are cut off
    q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    qc, kc, vc = (rearrange(t, "b h (c t) e -> b h c t e", t=chunk) for t in (q, k, v))
    kv = einsum(kc, vc, "b h c t m, b h c t d -> b h c m d")
    ks = kc.sum(-2)
    # sums over every earlier chunk (exclusive prefix), on top of the start
    s = start[0].unsqueeze(2) + F.pad(kv.cumsum(2), (0, 0, 0, 0, 1, 0))[:, :, :-1]
    z = start[1].unsqueeze(2) + F.pad(ks.cumsum(2), (0, 0, 1, 0))[:, :, :-1]
    end = s[:, :, -1] + kv[:, :, -1], z[:, :, -1] + ks[:, :, -1]
    within = einsum(qc, kc, "b h c t m, b h c s m -> b h c t s").tril()
    num = einsum(qc, s, "b h c t m, b h c m d -> b h c t d")
    num = num + einsum(within, vc, "b h c t s, b h c s d -> b h c t d")
    den = einsum(qc, z, "b h c t m, b h c m -> b h c t") + within.sum(-1)
    out = _ratio(num, den.unsqueeze(-1))
    return rearrange(out, "b h c t d -> b h (c t) d")[..., :n, :], end
