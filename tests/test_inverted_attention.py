"""Inverted cross-attention (softmax over the queries, Slot Attention arXiv 2006.15055).

The layer is checked against the weights written out naively here (float64 loops: per key, a
softmax over the real queries; per query, the weights renormalised over the real keys), against
x-transformers on copied weights (skipped without it), and for its padding invariance and its
refusals.

Shape legend: b batch, h heads, i queries, j keys, d model dim, dh head dim.
"""

from __future__ import annotations

import math

import pytest
import torch
from xt_pairs import padded_cross_call, xt_pair

from x_attn import CrossAttender, Decoder, Encoder

D, H, DH = 16, 2, 8


def naive_inverted(block, x, context, mask, context_mask):
    """The layer's output computed from its weights with explicit loops."""
    q = block.proj.to_q(x).view(*x.shape[:2], H, DH)
    k = block.proj.to_k(context).view(*context.shape[:2], H, DH)
    v = block.proj.to_v(context).view(*context.shape[:2], H, DH)
    b, n, j = x.shape[0], x.shape[1], context.shape[1]
    out = torch.zeros(b, n, H, DH, dtype=x.dtype)
    for bi in range(b):
        real_q = [i for i in range(n) if mask[bi, i]]
        real_k = [t for t in range(j) if context_mask[bi, t]]
        for h in range(H):
            w = torch.zeros(n, j, dtype=x.dtype)
            for t in real_k:
                logits = torch.stack([q[bi, i, h] @ k[bi, t, h] / math.sqrt(DH) for i in real_q])
                w[real_q, t] = logits.softmax(0)
            for i in real_q:
                row = w[i] / (w[i].sum() + 1e-8)
                out[bi, i, h] = sum(row[t] * v[bi, t, h] for t in real_k)
    return block.to_out(out.flatten(2))


def test_layer_equals_the_formula_written_out():
    torch.manual_seed(0)
    model = CrossAttender(
        dim=D, depth=1, heads=H, attn_dim_head=DH, cross_attn_inverted_attention=True
    ).double()
    block = model.layers[0].block
    x, ctx = torch.randn(2, 5, D).double(), torch.randn(2, 7, D).double()
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]).bool()
    context_mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 1, 1, 1]]).bool()
    got = block(x, ctx, mask=mask, context_mask=context_mask)
    expected = naive_inverted(block, x, ctx, mask, context_mask)
    torch.testing.assert_close(got[mask], expected[mask], rtol=1e-10, atol=1e-10)
    assert got[~mask].abs().max() == 0  # a padded query takes no weight


def test_padding_changes_nothing_real():
    torch.manual_seed(0)
    model = CrossAttender(
        dim=D, depth=2, heads=H, attn_dim_head=DH, cross_attn_inverted_attention=True
    ).double()
    x, ctx = torch.randn(1, 4, D).double(), torch.randn(1, 6, D).double()
    padded_x = torch.cat((x, torch.randn(1, 3, D).double()), dim=1)
    padded_ctx = torch.cat((ctx, torch.randn(1, 2, D).double()), dim=1)
    mask = torch.tensor([[True] * 4 + [False] * 3])
    context_mask = torch.tensor([[True] * 6 + [False] * 2])
    alone = model(x, context=ctx)
    padded = model(padded_x, context=padded_ctx, mask=mask, context_mask=context_mask)
    torch.testing.assert_close(padded[:, :4], alone, rtol=1e-10, atol=1e-10)


def test_refusals_name_the_reason():
    with pytest.raises(ValueError, match="causal stack"):
        Decoder(dim=D, depth=1, cross_attend=True, cross_attn_inverted_attention=True)
    with pytest.raises(ValueError, match="use cross_attn_inverted_attention"):
        Encoder(dim=D, depth=1, attn_inverted_attention=True)
    with pytest.raises(ValueError, match="3 values"):
        CrossAttender(dim=D, depth=2, cross_attn_inverted_attention=(True, False, True))


def test_per_layer_values_and_x_transformers_equal():
    flags = dict(dim=D, depth=3, heads=H, attn_dim_head=DH, cross_attn_dim_context=12)
    flags["cross_attn_inverted_attention"] = (True, False, True)
    theirs, ours = xt_pair(lambda lib: lib.CrossAttender(**flags))
    kinds = [type(layer.block.scores.normalizer).__name__ for layer in ours.layers[::2]]
    assert kinds == ["InvertedSoftmax", "NoneType", "InvertedSoftmax"]
    got, expected, mask = padded_cross_call(theirs, ours, D, 12)
    # x-transformers' inverted path differs from exact float64 by ~3e-8 (measured)
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-6, rtol=0)
