"""Reformer LSH attention kernels (Kitaev et al., arXiv 2001.04451).

Per hash round: bucket every key (angular LSH of the layer's :class:`LSHRule`), sort the
positions by (bucket, position), cut the sorted sequence into chunks of c = bucket size, and
let each chunk attend to itself and the chunk before it (no wrap-around). Which of those 2c
keys a query sees:

* padded keys never (they get a bucket of their own, after every real one, so they take no
  place in a real chunk: the content of a padded token changes nothing);
* non-causal (the paper): every real key of the two chunks, whatever its bucket;
* causal: the keys of the query's own bucket at earlier or equal ORIGINAL positions, and only
  the c most recent of them (sorted slots t+1 .. c+t for the query in slot t). The paper's
  chunk boundaries move when a later token lands in a lower bucket, which changes which past
  keys a query sees; "the c most recent keys of my bucket" depends on earlier tokens only, so
  this form is exactly causal. It is computed inside the same chunk + previous chunk;
* the query itself only when nothing else is visible: its logit is the finite
  ``SELF_LOGIT`` (-5e4), so it weighs 0 next to any other key and 1 when alone.

Rounds are combined by their normalisers: o_i = sum_r exp(z_i^r - z_i) o_i^r with
z_i = logsumexp_r z_i^r (a key seen in several rounds counts several times, as in the paper
with duplicate attention allowed). Any length: the sorted sequence is padded to a multiple of
c with masked slots. With one bucket and c >= n, every query sees every (earlier) key: dense
shared-QK attention with the self exclusion (tested). Time O(r n (log n + c d)), memory
O(r n c). Scores in float32 for half-precision inputs.

Shape legend: b batch, h heads, r hash rounds, L padded length, n chunks, t / s query / key
slots of a chunk (c and 2c), e head dim, i queries, j keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

from x_attn.kernels.inputs import AttnInputs, expand_kv_heads
from x_attn.kernels.manual import AttnMaps
from x_attn.utils import compute_dtype

SELF_LOGIT = -5e4  # a query's logit to itself: finite, so a query alone still sees itself


def lsh_attention(inputs: AttnInputs) -> Tensor:
    """(b, h, i, dv): LSH attention of ``inputs`` (see the module docstring)."""
    return _run(inputs, maps=False)[0]


def lsh_attention_maps(inputs: AttnInputs) -> tuple[Tensor, AttnMaps]:
    """The same, with the (b, h, i, j) weights it gave each key (summed over rounds)."""
    out, maps = _run(inputs, maps=True)
    assert maps is not None
    return out, maps


def _run(inputs: AttnInputs, maps: bool) -> tuple[Tensor, AttnMaps | None]:
    # scores, logsumexp and softmax in float32 for half precision, also under autocast (which
    # would recast the float32 products to the autocast dtype)
    with torch.autocast(inputs.q.device.type, enabled=False):
        return _run_wide(inputs, maps)


def _run_wide(inputs: AttnInputs, maps: bool) -> tuple[Tensor, AttnMaps | None]:
    rule, causal = _checked(inputs)
    q, spec = inputs.q, inputs.spec
    compute = compute_dtype(q.dtype)
    k = expand_kv_heads(inputs.k, q.shape[1]).to(compute)
    v = expand_kv_heads(inputs.v, q.shape[1]).to(compute)
    i, j, c = q.shape[-2], k.shape[-2], rule.bucket_size
    qa = torch.cat((k[..., : j - i, :], q.to(compute)), dim=-2)  # older rows: placeholders
    real = spec.key_padding
    real = torch.ones(k.shape[0], j, dtype=torch.bool, device=k.device) if real is None else real
    n_buckets = [rule.buckets_for(int(n)) for n in real.sum(-1).tolist()]  # per row, real keys
    buckets = rule.hasher.buckets(k, n_buckets)
    last = torch.tensor(n_buckets, device=k.device).view(-1, 1, 1, 1)  # padding's own bucket
    buckets = torch.where(rearrange(real, "b j -> b 1 1 j"), buckets, last)
    pad = math.ceil(j / c) * c - j
    qa, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (qa, k, v))
    real = F.pad(real, (0, pad), value=False)
    buckets = torch.cat((buckets, last.expand(*buckets.shape[:3], pad)), dim=-1)
    length = j + pad
    pos = torch.arange(length, device=k.device)
    order = (buckets * length + pos).argsort(dim=-1)  # (b h r L): by bucket, then position
    sorted_ = _Sorted(order, c, real, buckets)
    logits = einsum(sorted_.rows(qa), sorted_.window(k), "b h r n t e, b h r n s e -> b h r n t s")
    logits = logits * inputs.scale
    probs, lse = _softmax(logits, sorted_.allowed(causal), sorted_.is_self())
    out = einsum(probs, sorted_.window(v), "b h r n t s, b h r n s e -> b h r n t e")
    inverse = order.argsort(dim=-1)
    out = _gather(rearrange(out, "b h r n t e -> b h r (n t) e"), inverse)
    lse = _gather(rearrange(lse, "b h r n t -> b h r (n t) 1"), inverse).squeeze(-1)
    weights = _round_weights(lse)
    out = einsum(weights, out, "b h r l, b h r l e -> b h l e")[..., j - i : j, :]
    if not maps:
        return out.to(inputs.v.dtype), None
    dense = _dense_weights(probs, weights, sorted_, length)[..., j - i : j, :j]
    scores = einsum(qa, k, "b h l e, b h m e -> b h l m")[..., j - i : j, :j] * inputs.scale
    return out.to(inputs.v.dtype), AttnMaps(logits=scores, probs=dense)


def _checked(inputs: AttnInputs):
    """The LSH rule of the call and whether it is causal; refuses what LSH cannot apply."""
    spec = inputs.spec
    if spec.user is not None:
        raise ValueError(
            "attn_mask: LSH attention (attn_lsh) chooses the keys of each query by hashing, so "
            "it applies only causality and key padding; pass mask= for padding"
        )
    if spec.free:
        raise ValueError(
            "additional_key_values / memory keys: LSH attention (attn_lsh) attends to hashed "
            "positions only, and keys without a position have no bucket; drop them"
        )
    assert inputs.bias is None and inputs.dropout == 0.0, "refused at construction"
    assert not spec.pinned and spec.q.stop == spec.k.stop, "queries are the newest keys"
    rules = spec.active_rules()
    assert {rule.kind for rule in rules} <= {"causal", "lsh"}, rules
    rule = next(r for r in rules if r.kind == "lsh")
    return rule, any(r.kind == "causal" for r in rules)


def _gather(t: Tensor, index: Tensor) -> Tensor:
    """t (b h r? L e) or (b h L e), index (b h r L) -> (b h r L e): rows in ``index`` order."""
    if t.ndim == 4:
        t = t.unsqueeze(2).expand(-1, -1, index.shape[2], -1, -1)
    return t.gather(3, index.unsqueeze(-1).expand(*index.shape, t.shape[-1]))


def _with_previous(x: Tensor, fill: float | bool) -> Tensor:
    """(b h r n c ...) -> (b h r n 2c ...): each chunk after the one before it (``fill`` first)."""
    first = torch.full_like(x[:, :, :, :1], fill)
    return torch.cat((torch.cat((first, x[:, :, :, :-1]), dim=3), x), dim=4)


class _Sorted:
    """One round's sorted, chunked view of per-position tensors."""

    def __init__(self, order: Tensor, c: int, real: Tensor, buckets: Tensor) -> None:
        self.order, self.c = order, c
        b, h = order.shape[:2]
        self.pos = self._chunks(order)  # original positions, (b h r n c)
        self.real = self._chunks(
            real[:, None, None, :].expand(b, h, *order.shape[2:]).gather(3, order)
        )
        self.bucket = self._chunks(buckets.gather(3, order))

    def _chunks(self, t: Tensor) -> Tensor:
        return rearrange(t, "b h r (n c) ... -> b h r n c ...", c=self.c)

    def rows(self, t: Tensor) -> Tensor:
        """(b h L e) -> (b h r n c e) in sorted order."""
        return self._chunks(_gather(t, self.order))

    def window(self, t: Tensor) -> Tensor:
        """(b h L e) -> (b h r n 2c e): each chunk's keys, the previous chunk first."""
        return _with_previous(self.rows(t), 0.0)

    def key_pos(self) -> Tensor:
        return _with_previous(self.pos, -1)

    def is_self(self) -> Tensor:
        """(b h r n c 2c) the key slot is the query itself."""
        return self.pos.unsqueeze(-1) == self.key_pos().unsqueeze(-2)

    def allowed(self, causal: bool) -> Tensor:
        """(b h r n c 2c) which window keys each sorted query may see (self included)."""
        allowed = _with_previous(self.real, False).unsqueeze(-2)
        if not causal:
            return allowed.expand(*self.pos.shape, 2 * self.c)
        earlier = self.key_pos().unsqueeze(-2) <= self.pos.unsqueeze(-1)
        same = _with_previous(self.bucket, -1).unsqueeze(-2) == self.bucket.unsqueeze(-1)
        slots = torch.arange(2 * self.c, device=self.pos.device)
        recent = slots > torch.arange(self.c, device=self.pos.device).unsqueeze(-1)  # (c, 2c)
        return allowed & earlier & same & recent


def _softmax(logits: Tensor, allowed: Tensor, is_self: Tensor) -> tuple[Tensor, Tensor]:
    """Weights over each window and their log normaliser (-inf for a row that sees nothing)."""
    logits = torch.where(is_self, torch.full_like(logits, SELF_LOGIT), logits)
    logits = logits.masked_fill(~allowed, float("-inf"))
    dead = ~allowed.any(dim=-1, keepdim=True)
    logits = logits.masked_fill(dead, 0.0)  # a finite row, zeroed below (no NaN in backward)
    lse = logits.logsumexp(dim=-1, keepdim=True)
    probs = torch.exp(logits - lse).masked_fill(dead, 0.0)
    return probs, lse.masked_fill(dead, float("-inf")).squeeze(-1)


def _round_weights(lse: Tensor) -> Tensor:
    """(b h r L) exp(z^r - logsumexp_r z^r); rows dead in every round get any finite weight."""
    finite = lse.masked_fill(torch.isinf(lse), torch.finfo(lse.dtype).min)
    return finite.softmax(dim=2)  # not exp(z^r - z): z near SELF_LOGIT would lose digits


def _dense_weights(probs: Tensor, weights: Tensor, s: _Sorted, length: int) -> Tensor:
    """(b h L L) the weight each query gave each key, over all rounds (for return_attn)."""
    w = rearrange(weights.gather(3, s.order), "b h r (n t) -> b h r n t 1", t=s.c)
    rows = s.pos.unsqueeze(-1).expand_as(probs)
    cols = s.key_pos().clamp(min=0).unsqueeze(-2).expand_as(probs)
    flat = rearrange(rows * length + cols, "b h r n t s -> b h (r n t s)")
    values = rearrange(probs * w, "b h r n t s -> b h (r n t s)")
    dense = values.new_zeros(*values.shape[:2], length * length).scatter_add(2, flat, values)
    return rearrange(dense, "b h (l m) -> b h l m", l=length)
