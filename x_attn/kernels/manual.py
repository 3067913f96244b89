"""Readable softmax attention: the reference path, with hooks for features that need scores.

Key/value heads that serve a group of query heads are never copied per query head: queries are
viewed as (b, hk, g, i, d) against (b, hk, j, d) keys.

Shape legend: b batch, h heads, hk key/value heads, g = h / hk query heads per key/value head,
i queries, j keys, dh head dim, dv value head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import einsum
from torch import Tensor

from x_attn.kernels.inputs import AttnInputs, group_queries, merged_mask
from x_attn.utils import compute_dtype


class ScoreHooks:
    """Identity hooks; features override the stages they act on.

    Stages, in order: ``on_logits`` (scaled logits + bias, before masking), ``on_masked``
    (after masked entries are set to a large negative value), ``normalize`` (logits ->
    probabilities), ``on_probs`` (after normalisation, before dropout), ``on_output`` (the
    weighted sum of values, with the weights after dropout: for terms that need the weights
    themselves, such as Shaw et al.'s relative values).
    """

    def on_logits(self, sim: Tensor) -> Tensor:
        return sim

    def on_masked(self, sim: Tensor, mask: Tensor | None) -> Tensor:
        return sim

    def normalize(self, sim: Tensor) -> Tensor:
        return sim.softmax(dim=-1)

    def on_probs(self, attn: Tensor) -> Tensor:
        return attn

    def on_output(self, out: Tensor, attn: Tensor) -> Tensor:
        """out (b, h, i, dv) = attn (b, h, i, j) @ v; returns the layer's attention output."""
        return out


class WrappedHooks(ScoreHooks):
    """Another set of hooks (``inner``), delegated stage by stage; a subclass adds to the
    stages it overrides (a bias-stage feature wraps the layer's hooks this way)."""

    def __init__(self, inner: ScoreHooks) -> None:
        self.inner = inner

    def on_logits(self, sim: Tensor) -> Tensor:
        return self.inner.on_logits(sim)

    def on_masked(self, sim: Tensor, mask: Tensor | None) -> Tensor:
        return self.inner.on_masked(sim, mask)

    def normalize(self, sim: Tensor) -> Tensor:
        return self.inner.normalize(sim)

    def on_probs(self, attn: Tensor) -> Tensor:
        return self.inner.on_probs(attn)

    def on_output(self, out: Tensor, attn: Tensor) -> Tensor:
        return self.inner.on_output(out, attn)


@dataclass
class AttnMaps:
    """Scores of one manual attention call: logits (b, h, i, j) before masking, probs after."""

    logits: Tensor
    probs: Tensor


def manual_attention(
    inputs: AttnInputs, hooks: ScoreHooks | None = None
) -> tuple[Tensor, AttnMaps]:
    """softmax(q k^T * scale + bias, masked) v, computed explicitly; returns (out, maps).

    Scores (q k^T, scale, bias, softmax) are formed in float32 for half-precision inputs,
    with autocast off.
    Masked logits are set to ``-finfo.max``; query rows with no allowed key get all-zero
    weights (never NaN), both before and after ``on_probs``: a feature that mixes rows
    across heads (post-softmax talking heads) must never see the uniform row a fully
    masked softmax returns.
    """
    hooks = hooks or ScoreHooks()
    v = inputs.v
    # autocast would run the score products (q k^T, talking heads' mixing) in its low dtype,
    # below the float32 in which the masking constants and the softmax are meant to work
    with torch.autocast(inputs.q.device.type, enabled=False):
        logits, attn = _weights(inputs, hooks)
    dropped = F.dropout(attn, inputs.dropout) if inputs.dropout > 0 else attn
    dropped = dropped.to(v.dtype)
    grouped = group_queries(dropped, v.shape[1])
    out = einsum(grouped, v, "b hk g i j, b hk j d -> b hk g i d").flatten(1, 2)
    out = hooks.on_output(out, dropped)
    return out, AttnMaps(logits=logits, probs=attn)


def _weights(inputs: AttnInputs, hooks: ScoreHooks) -> tuple[Tensor, Tensor]:
    """(logits before masking, attention weights), both (b, h, i, j) in the compute dtype."""
    q, k = inputs.q, inputs.k
    compute = compute_dtype(q.dtype)  # q.k^T of float16 inputs overflows before the scale
    grouped = group_queries(q.to(compute), k.shape[1])
    sim = einsum(grouped, k.to(compute), "b hk g i d, b hk j d -> b hk g i j").flatten(1, 2)
    sim = sim * inputs.scale
    if inputs.bias is not None:
        sim = sim + inputs.bias.to(compute)
    sim = hooks.on_logits(sim)
    logits = sim
    mask = merged_mask(inputs)
    if mask is not None:
        sim = sim.masked_fill(~mask, -torch.finfo(compute).max)
    sim = hooks.on_masked(sim, mask)
    dead = None if mask is None else ~mask.any(dim=-1, keepdim=True)  # rows with no key
    attn = _zero_rows(hooks.normalize(sim), dead)  # before on_probs mixes rows across heads
    return logits, _zero_rows(hooks.on_probs(attn), dead)


def _zero_rows(attn: Tensor, dead: Tensor | None) -> Tensor:
    """Weights of query rows with no allowed key set to 0 (their softmax is a uniform row)."""
    return attn if dead is None else attn.masked_fill(dead, 0.0)
