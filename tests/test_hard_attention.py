"""Hard attention (``attn_hard``, arXiv 2410.01104): one-hot argmax weights forward, the
softmax's gradient backward (straight-through), in training and eval alike.

Checked against the formula written out here in float64 (forward and gradient), with masked
keys, and against x-transformers on copied weights (skipped without it).

Shape legend: b batch, h heads, i queries, j keys, d model dim, dh head dim.
"""

from __future__ import annotations

import math

import torch
from xt_pairs import decoder_logits_pair

from x_attn import Attention

D, H, DH = 16, 2, 8


def heads(t: torch.Tensor) -> torch.Tensor:
    """(b n (h dh)) -> (b h n dh)."""
    return t.unflatten(-1, (H, DH)).transpose(1, 2)


def test_forward_is_argmax_and_gradient_is_the_softmax_s():
    torch.manual_seed(0)
    layer = Attention(D, heads=H, dim_head=DH, hard=True).double().train()
    x, ctx = torch.randn(2, 4, D).double(), torch.randn(2, 6, D).double()
    context_mask = torch.tensor([[1, 1, 0, 1, 1, 0], [1, 1, 1, 1, 1, 1]]).bool()
    cotangent = torch.randn(2, 4, D).double()
    out, maps = layer(x, ctx, context_mask=context_mask, return_attn=True)
    (out * cotangent).sum().backward()
    got_grad = layer.proj.to_q.weight.grad.clone()
    layer.zero_grad()
    q, k, v = heads(layer.proj.to_q(x)), heads(layer.proj.to_k(ctx)), heads(layer.proj.to_v(ctx))
    logits = (q @ k.transpose(-1, -2) / math.sqrt(DH)).masked_fill(
        ~context_mask[:, None, None], -1e300
    )
    soft = logits.softmax(-1)
    one_hot = torch.zeros_like(soft)
    for b in range(2):
        for h in range(H):
            for i in range(4):
                one_hot[b, h, i, int(logits[b, h, i].argmax())] = 1.0
    torch.testing.assert_close(maps.probs, one_hot, atol=0, rtol=0)
    weights = one_hot + soft - soft.detach()  # straight-through, written out
    expected = layer.to_out((weights @ v).transpose(1, 2).flatten(2))
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    (expected * cotangent).sum().backward()
    torch.testing.assert_close(got_grad, layer.proj.to_q.weight.grad, atol=1e-10, rtol=0)
    assert got_grad.abs().sum() > 0  # the queries learn through the softmax's gradient


def test_decoder_equals_x_transformers():
    ours, theirs = decoder_logits_pair(attn_hard=True)
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=0)
