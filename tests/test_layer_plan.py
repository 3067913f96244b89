"""Which layers run, in which order, how often: checked against stacks run by hand.

The reference runs the stack's layer modules one after the other in the order the flags
describe (pre-norm residual, written out here), so a wrong order, a missing repeat or a layer
run too often changes the result. Also: stochastic depth (each training forward equals the
stack with some layers removed, and every subset occurs), per-call ``causal`` against the other
stack type on the same weights, and cached decoding through repeated layers.

Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from flag_models import jittered
from torch import Tensor

from x_attn import Decoder, Encoder, TransformerWrapper

D, B, N = 16, 2, 6
SMALL = dict(dim=D, heads=2, attn_dim_head=8, ff_mult=2)


def rand(*shape: int, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def by_hand(stack, x: Tensor, order) -> Tensor:
    """Pre-norm residual layers ``stack.layers[i]`` for i in ``order``, then the final norm."""
    for i in order:
        layer = stack.layers[i]
        out = layer.block(layer.norm(x))
        x = x + (out[0] if isinstance(out, tuple) else out)
    return stack.final_norm(x)


def close(a: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_layers_execute_order_runs_the_modules_in_that_order():
    order = (2, 3, 0, 1, 0, 1)
    stack = jittered(Decoder(depth=2, **SMALL, layers_execute_order=order))
    assert stack.layer_types == ("a", "f", "a", "f") and stack.types == ("a", "f") * 3
    x = rand(B, N, D)
    close(stack(x), by_hand(stack, x, order))
    assert (stack(x) - by_hand(stack, x, (0, 1, 2, 3))).abs().max() > 1e-6


def test_weight_tie_layers_runs_one_block_depth_times():
    stack = jittered(Decoder(depth=3, **SMALL, weight_tie_layers=True))
    assert len(stack.layers) == 2
    single = Decoder(depth=1, **SMALL)
    assert sum(p.numel() for p in stack.parameters()) == sum(p.numel() for p in single.parameters())
    x = rand(B, N, D)
    close(stack(x), by_hand(stack, x, (0, 1) * 3))


def test_depth_none_with_custom_layers():
    stack = jittered(Decoder(depth=None, **SMALL, custom_layers=("a", "f", "a")))
    x = rand(B, N, D)
    close(stack(x), by_hand(stack, x, (0, 1, 2)))
    with pytest.raises(ValueError, match="'depth' is needed"):
        Decoder(depth=None, **SMALL)


def test_repeat_blocks_equals_the_explicit_order_and_counts_layer_hiddens():
    stack = jittered(Decoder(depth=3, **SMALL))
    x = rand(B, N, D)
    out, inter = stack(x, repeat_blocks=((1, 2),), return_hiddens=True)
    order = (0, 1, 2, 3, 2, 3, 4, 5)
    close(out, by_hand(stack, x, order))
    close(stack(x, layers_execute_order=order), out)
    assert len(inter.layer_hiddens) == len(order) + 1 and len(inter.hiddens) == 4
    out2 = stack(x, repeat_blocks=((0, 1), 2))  # one spec: blocks 0..1 twice
    close(out2, by_hand(stack, x, (0, 1, 2, 3, 0, 1, 2, 3, 4, 5)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(repeat_blocks=((1, 2),), layers_execute_order=(0, 1)), "not both"),
        (dict(repeat_blocks=((2, 5), 2)), "repeat_blocks entries"),
        (dict(layers_execute_order=(0, 9)), "layer index"),
    ],
)
def test_per_call_orders_are_checked(kwargs, match):
    stack = Decoder(depth=3, **SMALL)
    with pytest.raises(ValueError, match=match):
        stack(torch.zeros(B, N, D), **kwargs)


def test_per_call_orders_refuse_cache_mems_and_custom_layers():
    net = TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=Decoder(depth=2, **SMALL))
    _, cache = net(torch.zeros(1, 3, dtype=torch.long), return_cache=True)
    with pytest.raises(ValueError, match="cache entries and mems"):
        net(
            torch.zeros(1, 1, dtype=torch.long),
            cache=cache,
            repeat_blocks=((0, 2),),
            return_cache=True,
        )
    # intermediates of a per-call order carry no cache: its entries would not fit the stack
    stack = net.attn_layers
    _, inter = stack(torch.zeros(1, 3, D), repeat_blocks=((0, 2),), return_hiddens=True)
    assert inter.cache is None
    assert stack(torch.zeros(1, 3, D), return_hiddens=True)[1].cache is not None
    custom = Decoder(depth=None, **SMALL, custom_layers=("a", "f", "a", "f"))
    with pytest.raises(ValueError, match="layers_execute_order instead"):
        custom(torch.zeros(B, N, D), repeat_blocks=((0, 2),))


@pytest.mark.parametrize(
    "flags, match",
    [
        (dict(layers_execute_order=(0, 1)), r"never runs layers \[2, 3\]"),
        (dict(layers_execute_order=(0, 1, 2, 4)), "layer index"),
        (dict(weight_tie_layers=True, custom_layers=("a", "f")), "weight_tie_layers"),
        (dict(weight_tie_layers=True, layers_execute_order=(0, 1)), "weight_tie_layers"),
    ],
)
def test_plan_flags_that_cannot_work_are_refused(flags, match):
    with pytest.raises(ValueError, match=match):
        Decoder(depth=2, **SMALL, **flags)


def test_cached_decoding_through_repeated_layers_equals_the_full_forward():
    """Each run of a shared layer keeps its own cache entry."""
    torch.manual_seed(0)
    layers = Decoder(depth=2, **SMALL, layers_execute_order=(0, 1, 2, 3, 0, 1), rotary_pos_emb=True)
    net = jittered(TransformerWrapper(num_tokens=11, max_seq_len=16, attn_layers=layers))
    x = torch.randint(0, 11, (B, 9), generator=torch.Generator().manual_seed(3))
    full = net(x)
    logits, cache = net(x[:, :5], return_cache=True)
    assert len(cache.entries) == 3
    steps = [logits]
    for t in range(5, 9):
        step, cache = net(x[:, t : t + 1], cache=cache, return_cache=True)
        steps.append(step)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-9)


# ---------------------------------------------------------------- stochastic depth


def test_layer_dropout_skips_whole_layers_in_training_only():
    stack = jittered(Decoder(depth=1, **SMALL, layer_dropout=(0.0, 0.5)))
    x = rand(B, N, D)
    close(stack(x), by_hand(stack, x, (0, 1)))  # eval: every layer runs
    stack.train()
    subsets = {s: by_hand(stack, x, s) for s in ((0, 1), (0,))}  # layer 0 never drops
    seen = []
    torch.manual_seed(0)
    for _ in range(40):
        out = stack(x)
        matches = [s for s, ref in subsets.items() if torch.allclose(out, ref, atol=1e-10)]
        assert len(matches) == 1, "a training forward must equal the stack minus some layers"
        seen.append(matches[0])
    assert 8 < seen.count((0,)) < 32  # p = 0.5


def test_layer_dropout_keeps_mems_aligned_and_refuses_a_cache_in_training():
    stack = jittered(Decoder(depth=2, **SMALL, layer_dropout=0.5)).train()
    torch.manual_seed(0)
    for _ in range(5):
        _, inter = stack(rand(B, N, D), return_hiddens=True)
        assert len(inter.hiddens) == 2  # one per self-attention layer, run or skipped
    net = TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=stack).train()
    with pytest.raises(ValueError, match="eval mode"):
        net(torch.zeros(1, 3, dtype=torch.long), return_cache=True)


def test_layer_dropout_values_are_checked():
    with pytest.raises(ValueError, match="layer_dropout"):
        Decoder(depth=2, **SMALL, layer_dropout=1.0)
    with pytest.raises(ValueError, match="'layer_dropout' has 3 values"):
        Decoder(depth=2, **SMALL, layer_dropout=(0.1, 0.1, 0.1))


# ---------------------------------------------------------------- per-call causal


@pytest.mark.parametrize("cross", [False, True])
def test_per_call_causal_equals_the_other_stack_type(cross):
    dec = jittered(Decoder(depth=2, **SMALL, cross_attend=cross))
    enc = Encoder(depth=2, **SMALL, cross_attend=cross).double().eval()
    enc.load_state_dict(dec.state_dict())
    x = rand(B, N, D)
    kw = dict(context=rand(B, 3, D, seed=5)) if cross else {}
    close(dec(x, causal=False, **kw), enc(x, **kw))
    close(enc(x, causal=True, **kw), dec(x, **kw))
    assert (dec(x, **kw) - enc(x, **kw)).abs().max() > 1e-6


def test_per_call_causal_is_checked():
    stack = Decoder(depth=1, **SMALL)
    with pytest.raises(TypeError, match="'causal'"):
        stack(torch.zeros(B, N, D), causal="no")
    net = TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=stack)
    _, cache = net(torch.zeros(1, 3, dtype=torch.long), return_cache=True)
    with pytest.raises(ValueError, match="causal=False with a KV cache"):
        net(torch.zeros(1, 1, dtype=torch.long), cache=cache, causal=False, return_cache=True)


def test_every_subset_order_of_a_two_block_stack_is_distinct():
    """The orders above are told apart: each permutation of the modules gives another output."""
    stack = jittered(Decoder(depth=2, **SMALL))
    x = rand(B, N, D)
    outs = [stack(x, layers_execute_order=o) for o in itertools.permutations(range(4))]
    for a, b in itertools.combinations(outs, 2):
        assert (a - b).abs().max() > 1e-8
