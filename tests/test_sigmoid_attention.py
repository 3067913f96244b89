"""Sigmoid attention (``attn_sigmoid`` / ``cross_attn_sigmoid``, arXiv 2409.04431).

The weights are checked against ``sigmoid(q . k * scale)`` written out here in float64 (no
normalisation over the keys, bias 0 as in x-transformers), masked keys are shown to have no
effect, the combination with inverted cross-attention against its formula written out, and
the layers against x-transformers on copied weights (skipped without it).

Shape legend: b batch, h heads, i queries, j keys, d model dim, dh head dim.
"""

from __future__ import annotations

import math

import pytest
import torch
from xt_pairs import decoder_logits_pair, padded_cross_call, xt_pair

from x_attn import Attention, CrossAttender, Decoder, TransformerWrapper

D, H, DH = 16, 2, 8


def heads(t: torch.Tensor) -> torch.Tensor:
    """(b n (h dh)) -> (b h n dh)."""
    return t.unflatten(-1, (H, DH)).transpose(1, 2)


@torch.no_grad()
def test_weights_and_output_equal_the_formula_written_out():
    torch.manual_seed(0)
    layer = Attention(D, heads=H, dim_head=DH, sigmoid=True).double()
    x, ctx = torch.randn(2, 4, D).double(), torch.randn(2, 6, D).double()
    context_mask = torch.tensor([[1, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1]]).bool()
    out, maps = layer(x, ctx, context_mask=context_mask, return_attn=True)
    q, k, v = heads(layer.proj.to_q(x)), heads(layer.proj.to_k(ctx)), heads(layer.proj.to_v(ctx))
    expected = torch.zeros(2, H, 4, 6, dtype=torch.float64)
    for b in range(2):
        for h in range(H):
            for i in range(4):
                for j in range(6):
                    if context_mask[b, j]:
                        s = float(q[b, h, i] @ k[b, h, j]) / math.sqrt(DH)
                        expected[b, h, i, j] = 1 / (1 + math.exp(-s))
    torch.testing.assert_close(maps.probs, expected, atol=1e-12, rtol=0)
    merged = (expected @ v).transpose(1, 2).flatten(2)
    torch.testing.assert_close(out, layer.to_out(merged), atol=1e-12, rtol=0)
    assert (expected.sum(-1) - 1).abs().max() > 0.1  # no normalisation: rows do not sum to 1


def test_masked_keys_have_no_effect():
    torch.manual_seed(0)
    model = CrossAttender(dim=D, depth=2, heads=H, attn_dim_head=DH, cross_attn_sigmoid=True)
    model = model.double()
    x, ctx = torch.randn(1, 5, D).double(), torch.randn(1, 7, D).double()
    context_mask = torch.tensor([[1, 1, 0, 1, 1, 0, 1]]).bool()
    other = ctx.clone()
    other[~context_mask] = 100 * torch.randn_like(other[~context_mask])
    got = model(x, context=ctx, context_mask=context_mask)
    torch.testing.assert_close(model(x, context=other, context_mask=context_mask), got)
    alone = model(x, context=ctx[:, context_mask[0]])  # the masked keys dropped altogether
    torch.testing.assert_close(got, alone, atol=1e-12, rtol=0)


def test_causal_self_attention_ignores_the_future_and_decodes_with_a_cache():
    torch.manual_seed(0)
    model = TransformerWrapper(
        num_tokens=20, max_seq_len=16, attn_layers=Decoder(dim=D, depth=2, attn_sigmoid=True)
    ).double()
    model.eval()
    toks = torch.randint(0, 20, (2, 9))
    full = model(toks)
    changed = toks.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 20
    torch.testing.assert_close(model(changed)[:, :6], full[:, :6], atol=1e-12, rtol=0)
    _, cache = model(toks[:, :5], return_intermediates=True)
    steps = []
    for t in range(5, 9):
        logits, cache = model(toks[:, : t + 1], cache=cache, return_intermediates=True)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 5:], atol=1e-10, rtol=0)


def test_inverted_with_sigmoid_equals_the_formula_written_out():
    """Per pair sigmoid(s), hidden pairs 0, each query's weights renormalised over the keys."""
    torch.manual_seed(0)
    model = CrossAttender(
        dim=D,
        depth=1,
        heads=H,
        attn_dim_head=DH,
        cross_attn_inverted_attention=True,
        cross_attn_sigmoid=True,
    ).double()
    block = model.layers[0].block
    x, ctx = torch.randn(2, 4, D).double(), torch.randn(2, 6, D).double()
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    context_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 1, 1]]).bool()
    got = block(x, ctx, mask=mask, context_mask=context_mask)
    q, k, v = heads(block.proj.to_q(x)), heads(block.proj.to_k(ctx)), heads(block.proj.to_v(ctx))
    w = torch.sigmoid(q @ k.transpose(-1, -2) / math.sqrt(DH))
    w = w * context_mask[:, None, None, :] * mask[:, None, :, None]
    w = w / (w.sum(-1, keepdim=True) + 1e-8)
    expected = block.to_out((w @ v).transpose(1, 2).flatten(2))
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-12, rtol=0)


@pytest.mark.parametrize("inverted", [False, (True, False, True)], ids=["plain", "inverted"])
def test_cross_attender_equals_x_transformers(inverted):
    flags = dict(dim=D, depth=3, heads=H, attn_dim_head=DH, cross_attn_dim_context=12)
    flags.update(cross_attn_sigmoid=True, cross_attn_inverted_attention=inverted)
    theirs, ours = xt_pair(lambda lib: lib.CrossAttender(**flags))
    got, expected, mask = padded_cross_call(theirs, ours, D, 12)
    # inverted: x-transformers' renormalisation has another epsilon (~3e-9 here, measured)
    tol = 1e-6 if inverted else 1e-10
    torch.testing.assert_close(got[mask], expected[mask], atol=tol, rtol=0)


def test_decoder_equals_x_transformers():
    ours, theirs = decoder_logits_pair(attn_sigmoid=True)
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=0)
