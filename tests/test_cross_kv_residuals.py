"""cross_attn_kv_residuals: one tensor per cross-attention run added to the context its keys and
values read (x-transformers' forward argument).

Checked against the stack run layer by layer with the sum written out, against x-transformers on
copied weights (skipped without it), and for cached decoding == the full forward.

Shape legend: b batch, n sequence, j context length, d model dim.
"""

from __future__ import annotations

import pytest
import torch
from xt_pairs import xt_pair

from x_attn import Decoder, Encoder

D = 16


def by_hand(stack, x, context, residuals):
    """The stack's own layers run one at a time; cross layer k reads context + residuals[k]."""
    k = 0
    for layer in stack.layers:
        h = layer.normed(x, None)
        if layer.kind == "c":
            out = layer.block(h, context + residuals[k])
            k += 1
        else:
            out = layer.block(h)
        x = layer.merge(layer.post_branch(out, None), x, None)
    return stack.final_norm(x)


@pytest.mark.parametrize("stack_cls", [Encoder, Decoder])
def test_each_cross_layer_reads_its_own_residual(stack_cls):
    torch.manual_seed(0)
    stack = stack_cls(dim=D, depth=3, heads=2, attn_dim_head=8, cross_attend=True).double()
    x, ctx = torch.randn(2, 5, D).double(), torch.randn(2, 7, D).double()
    res = torch.randn(3, 2, 7, D).double()
    expected = by_hand(stack, x, ctx, res)
    torch.testing.assert_close(stack(x, context=ctx, cross_attn_kv_residuals=res), expected)
    as_list = stack(x, context=ctx, cross_attn_kv_residuals=list(res))
    torch.testing.assert_close(as_list, expected)
    assert (expected - by_hand(stack, x, ctx, res.flip(0))).abs().max() > 1e-3  # order matters


def test_cached_decoding_equals_the_full_forward():
    torch.manual_seed(0)
    dec = Decoder(dim=D, depth=2, heads=2, attn_dim_head=8, cross_attend=True).double().eval()
    x, ctx = torch.randn(1, 6, D).double(), torch.randn(1, 4, D).double()
    res = torch.randn(2, 1, 4, D).double()
    full = dec(x, context=ctx, cross_attn_kv_residuals=res)
    out, inter = dec(x[:, :3], context=ctx, cross_attn_kv_residuals=res, return_hiddens=True)
    steps = [out]
    for i in range(3, 6):
        out, inter = dec(
            x[:, i : i + 1],
            context=ctx,
            cross_attn_kv_residuals=res,
            cache=inter.cache,
            return_hiddens=True,
        )
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-10, atol=1e-10)


def test_bad_residuals_are_refused_by_name():
    dec = Decoder(dim=D, depth=2, heads=2, cross_attend=True)
    x, ctx = torch.randn(1, 3, D), torch.randn(1, 4, D)
    with pytest.raises(ValueError, match="has 1 entries, but this call runs 2"):
        dec(x, context=ctx, cross_attn_kv_residuals=torch.randn(1, 1, 4, D))
    with pytest.raises(ValueError, match="context's shape"):
        dec(x, context=ctx, cross_attn_kv_residuals=[torch.randn(1, 5, D), None])
    with pytest.raises(ValueError, match="pass context="):
        Decoder(dim=D, depth=1)(x, cross_attn_kv_residuals=[torch.randn(1, 4, D)])
    with pytest.raises(TypeError, match="list of tensors"):
        dec(x, context=ctx, cross_attn_kv_residuals="no")


def test_equals_x_transformers():
    flags = dict(dim=D, depth=2, heads=2, attn_dim_head=8, attn_flash=True, cross_attend=True)
    theirs, ours = xt_pair(lambda lib: lib.Decoder(**flags))
    x, ctx = torch.randn(2, 5, D).double(), torch.randn(2, 6, D).double()
    res = torch.randn(2, 2, 6, D).double()
    with torch.no_grad():
        expected = theirs(x, context=ctx, cross_attn_kv_residuals=res)
        got = ours(x, context=ctx, cross_attn_kv_residuals=res)
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=0)
