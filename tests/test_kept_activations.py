"""An inference forward keeps no layer's activations past its run unless a return reads them.

The stack's intermediates (``hiddens``, ``layer_hiddens``, ``attn_intermediates``) are filled
only when the caller keeps them (``return_intermediates``, ``return_mems``, the next-embedding
head, or ``keep_hiddens=True`` on the stack): otherwise a no-grad forward would hold every
layer's input and attention operands to its end, and its peak memory would grow with depth.
"""

from __future__ import annotations

import weakref

import pytest
import torch

from x_attn import ContinuousTransformerWrapper, Decoder, TransformerWrapper


def _second_layer_input_alive_at_last_layer(model, call) -> bool:
    """Whether the stream entering the stack's second layer is still alive when its last
    layer runs (weak reference, so the probe itself keeps nothing). Each layer's pre-norm
    receives the stream entering it."""
    layers = [layer.norm for layer in model.attn_layers.layers]
    probe: dict[str, object] = {}

    def grab(_module, args):
        probe["ref"] = weakref.ref(args[0])

    def check(_module, _args):
        probe["alive"] = probe["ref"]() is not None

    hooks = [layers[1].register_forward_pre_hook(grab), layers[-1].register_forward_pre_hook(check)]
    try:
        with torch.no_grad():
            call()
    finally:
        for h in hooks:
            h.remove()
    return bool(probe["alive"])


def _model(depth: int = 3) -> TransformerWrapper:
    torch.manual_seed(0)
    layers = Decoder(dim=16, depth=depth, heads=2, rotary_pos_emb=True)
    return TransformerWrapper(num_tokens=20, max_seq_len=16, attn_layers=layers).eval()


def test_plain_forward_frees_each_layer_input():
    model = _model()
    x = torch.randint(0, 20, (2, 8))
    assert not _second_layer_input_alive_at_last_layer(model, lambda: model(x))
    assert not _second_layer_input_alive_at_last_layer(model, lambda: model(x, return_cache=True))


@pytest.mark.parametrize("ask", ["return_intermediates", "return_mems"])
def test_returns_that_read_the_hiddens_keep_them(ask):
    model = _model()
    x = torch.randint(0, 20, (2, 8))
    assert _second_layer_input_alive_at_last_layer(model, lambda: model(x, **{ask: True}))


def test_stack_keep_hiddens_false_equals_true_and_leaves_lists_empty():
    model = _model()
    x = torch.randn(2, 8, 16)
    stack = model.attn_layers
    out_keep, kept = stack(x, return_hiddens=True)
    out_free, free = stack(x, return_hiddens=True, keep_hiddens=False)
    torch.testing.assert_close(out_free, out_keep, rtol=0, atol=0)
    assert len(kept.hiddens) == 3 and len(kept.layer_hiddens) == 7
    assert len(kept.attn_intermediates) == 3
    assert free.hiddens == [] and free.layer_hiddens == [] and free.attn_intermediates == []
    assert free.kernels == kept.kernels and free.cache is not None


def test_continuous_plain_forward_frees_each_layer_input():
    torch.manual_seed(0)
    model = ContinuousTransformerWrapper(
        dim_in=4, dim_out=4, max_seq_len=16, attn_layers=Decoder(dim=16, depth=3, heads=2)
    ).eval()
    x = torch.randn(2, 8, 4)
    assert not _second_layer_input_alive_at_last_layer(model, lambda: model(x))
    assert _second_layer_input_alive_at_last_layer(model, lambda: model(x, return_mems=True))


def test_mems_refused_clearly_when_the_caller_drops_the_hiddens():
    model = _model()
    x = torch.randint(0, 20, (2, 8))
    with pytest.raises(ValueError, match="keep_hiddens=False"):
        model(x, return_mems=True, keep_hiddens=False)
