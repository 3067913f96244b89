"""Value residual learning (ResFormer, arXiv 2410.17897) against a hand-written stack.

Each later attention layer of a kind mixes the first layer's raw values into its own:
v_l <- v_1 + lambda (v_l - v_1), lambda = 0.5 or sigmoid(W x + b) per key row and head.

Shape legend: b batch, h heads, n / i queries, j keys, d head dim, dm model dim.
"""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from reference import reference_attention
from test_attention_features import close, hand_qkv, make, project_out
from test_stack_flags import SMALL, D, hand_ff, hand_norm, hand_residual, rand, randomize

from x_attn import Attention, Decoder, Encoder


def hand_values_stack(stack, x, context=None):
    """Pre-norm stack with value residuals, every attention written out."""
    first = {"a": None, "c": None}
    for kind, layer in zip(stack.types, stack.layers):
        h = hand_norm(layer["norm"], x)
        block = layer["block"]
        if kind == "f":
            out = hand_ff(block, h)
        else:
            rows = h if kind == "a" else context
            q, _, _ = hand_qkv(block, h)
            _, k, v = hand_qkv(block, rows)
            if first[kind] is None:
                first[kind] = v
            else:
                mix = block.value_residual.to_mix
                lam = 0.5 if mix is None else torch.sigmoid(rows @ mix.weight.T + mix.bias)
                lam = lam if mix is None else rearrange(lam, "b j h -> b h j 1")
                v = first[kind] + lam * (v - first[kind])
            out = project_out(block, reference_attention(q, k, v, causal=stack.causal))
        x = hand_residual(layer["residual"], out, x)
    return hand_norm(stack.final_norm, x)


@pytest.mark.parametrize("learned", [True, False])
def test_decoder_value_residual_matches_the_hand_stack(learned):
    stack = randomize(
        Decoder(depth=3, add_value_residual=True, learned_value_residual_mix=learned, **SMALL)
    )
    x = rand(2, 6, D)
    close(stack(x), hand_values_stack(stack, x))
    plain = randomize(Decoder(depth=3, **SMALL))
    missing, unexpected = plain.load_state_dict(stack.state_dict(), strict=False)
    assert not missing and bool(unexpected) == learned
    assert (plain(x) - stack(x)).abs().max() > 1e-3  # the residual changes the function


def test_cross_attention_layers_mix_the_first_cross_layer_values():
    stack = randomize(Encoder(depth=3, cross_attend=True, add_value_residual=True, **SMALL))
    x, context = rand(2, 5, D), rand(2, 7, D, seed=3)
    close(stack(x, context=context), hand_values_stack(stack, x, context))


def test_only_later_self_attention_layers_learn_a_mix():
    stack = Encoder(dim=16, depth=3, heads=2, cross_attend=True, add_value_residual=True)
    mixes = [
        layer["block"].value_residual.to_mix is not None
        for kind, layer in zip(stack.types, stack.layers)
        if kind != "f"
    ]
    assert mixes == [False, False, True, False, True, False]  # a c a c a c


@pytest.mark.parametrize("role", ["fixed", "learned"])
def test_attention_mixes_the_given_first_layer_values(role):
    attn = make(value_residual_role=role, causal=True).eval()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    first = torch.randn(2, 2, 5, 8, dtype=torch.float64)
    q, k, v = hand_qkv(attn, x)
    lam = 0.5
    if role == "learned":
        mix = attn.value_residual.to_mix
        lam = rearrange(torch.sigmoid(x @ mix.weight.T + mix.bias), "b j h -> b h j 1")
    expected = reference_attention(q, k, first + lam * (v - first), causal=True)
    out, inter = attn(x, value_residual=first, return_intermediates=True)
    close(out, project_out(attn, expected))
    close(inter.values, v)  # the raw values, as a first layer hands them on
    with pytest.raises(ValueError, match="add_value_residual: the first layer's values"):
        attn(x, value_residual=first[:, :, :3])


def test_value_residual_with_reversible_is_refused():
    with pytest.raises(ValueError, match="reversible=True.*add_value_residual"):
        Decoder(dim=16, depth=2, reversible=True, add_value_residual=True)


def test_first_layer_hands_on_raw_values_even_with_value_rmsnorm():
    attn = Attention(16, 2, dim_head=8, value_rmsnorm=True, value_residual_role="source").double()
    x = torch.randn(2, 4, 16, dtype=torch.float64)
    _, inter = attn(x, return_intermediates=True)
    close(inter.values, hand_qkv(attn, x)[2])


def test_the_source_is_the_layer_that_runs_first_under_an_execute_order():
    from x_attn.attention.features.value_residual import value_residual_roles

    roles = value_residual_roles(("a", "f", "a", "f"), True, True, (2, 3, 0, 1))
    assert roles == ["learned", None, "source", None]
    torch.manual_seed(0)
    stack = Decoder(
        dim=16, depth=2, heads=2, add_value_residual=True, layers_execute_order=(2, 3, 0, 1)
    )
    stack(torch.randn(1, 4, 16)).sum().backward()
    for name, p in stack.named_parameters():
        assert p.grad is not None, name  # the mix of the layer that runs second is used
