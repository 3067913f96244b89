"""per_layer(...): one value of an attn_* flag per self-attention layer.

A stack with per-layer values must compute, layer by layer, exactly what a stack with that
value everywhere computes (same weights), refuse wrong lengths and flags that cannot differ
between layers, leave cross-attention at the default, and survive a checkpoint round trip.
"""

from __future__ import annotations

import pytest
import torch

from x_attn import Decoder, Encoder, TransformerWrapper, load, per_layer, to_config
from x_attn.layer_values import layer_config
from x_attn.serialization import from_config

DIMS = dict(dim=16, depth=3, heads=2, attn_dim_head=8)


def _layer_outputs(stack, x: torch.Tensor) -> list[torch.Tensor]:
    """The output of each self-attention block on the same input ``x``."""
    with torch.no_grad():
        return [
            layer["block"](x)[0] for kind, layer in zip(stack.types, stack.layers) if kind == "a"
        ]


def test_each_layer_computes_what_a_uniform_stack_with_its_value_computes():
    torch.manual_seed(0)
    mixed = Decoder(**DIMS, attn_sparse_topk=per_layer((None, 2, 4))).double()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    got = _layer_outputs(mixed, x)
    for index, value in enumerate((None, 2, 4)):
        uniform = Decoder(**DIMS, attn_sparse_topk=value).double()
        uniform.load_state_dict(mixed.state_dict())
        expected = _layer_outputs(uniform, x)[index]
        torch.testing.assert_close(got[index], expected, atol=1e-12, rtol=0)
    kernels = [line.split(": ")[1] for line in mixed.explain()]
    assert kernels == ["sdpa", "manual", "manual"]


def test_values_differ_between_layers():
    torch.manual_seed(0)
    mixed = Decoder(**DIMS, attn_sparse_topk=per_layer((None, 2, 4))).double()
    full = Decoder(**DIMS).double()
    full.load_state_dict(mixed.state_dict())
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    a, b = _layer_outputs(mixed, x), _layer_outputs(full, x)
    torch.testing.assert_close(a[0], b[0], atol=1e-12, rtol=0)
    assert (a[1] - b[1]).abs().max() > 1e-6


def test_cross_attention_keeps_the_default():
    stack = Encoder(**DIMS, cross_attend=True, attn_sparse_topk=per_layer((2, 2, 2)))
    kinds = [(t, line.split(": ")[1]) for t, line in zip("acacac", stack.explain())]
    assert [k for t, k in kinds if t == "c"] == ["sdpa"] * 3
    assert [k for t, k in kinds if t == "a"] == ["manual"] * 3


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (dict(attn_sparse_topk=per_layer((2, 2))), "has 2 values, but the stack builds 3"),
        (dict(attn_dim_head=per_layer((8, 8, 8))), "attn_dim_head cannot take per_layer"),
        (dict(attn_mta=per_layer((True, False, False))), "attn_mta_layers"),
        (dict(attn_global_tokens=per_layer(((0,), (1,), (2,)))), "takes a tuple as its own"),
        (dict(attn_sparse_topk=per_layer((2, 0, 2))), "attn_sparse_topk"),
        (dict(attn_sparse_topk=per_layer((2, "x", 2))), "attn_sparse_topk"),
    ],
)
def test_refusals(flags, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Decoder(**{**DIMS, "attn_dim_head": 8, **flags})


def test_per_layer_needs_a_sequence():
    with pytest.raises(TypeError, match="one value per layer"):
        per_layer(3)
    with pytest.raises(TypeError, match="non-empty"):
        per_layer(())


def test_config_and_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    layers = Decoder(**DIMS, attn_sparse_topk=per_layer([None, 2, 3]))
    model = TransformerWrapper(num_tokens=20, max_seq_len=16, attn_layers=layers).eval()
    rebuilt = from_config(to_config(model))
    assert rebuilt.attn_layers.config == model.attn_layers.config
    model.save(tmp_path / "ckpt")
    loaded = load(tmp_path / "ckpt")
    x = torch.randint(0, 20, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    assert layer_config(loaded.attn_layers.config, "attn", 2).sparse_topk == 3
