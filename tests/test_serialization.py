"""to_config / from_config: a JSON round trip rebuilds the same architecture (checkpoints)."""

from __future__ import annotations

import json

import pytest
import torch
from flag_models import bind_condition

from x_attn import (
    AutoregressiveWrapper,
    ContinuousTransformerWrapper,
    Decoder,
    Encoder,
    TransformerWrapper,
    ViTransformerWrapper,
    XTransformer,
    from_config,
    to_config,
)
from x_attn.registry import FLAGS


def json_round_trip(model):
    return from_config(json.loads(json.dumps(to_config(model))))


def same_outputs(a, b, *inputs):
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(*inputs), b(*inputs), rtol=0, atol=0)


@pytest.mark.parametrize("case", FLAGS, ids=lambda c: c.name)
def test_every_flag_round_trips_through_json(case):
    torch.manual_seed(0)
    dims = dict(dim=16, depth=2, heads=2, attn_dim_head=8)
    layers = Decoder(**{**dims, **case.layers})  # a case may set its own heads
    model = TransformerWrapper(num_tokens=20, max_seq_len=16, attn_layers=layers, **case.wrapper)
    rebuilt = json_round_trip(model)
    assert type(rebuilt.attn_layers) is Decoder
    assert rebuilt.attn_layers.config == model.attn_layers.config
    for net in (model, rebuilt):  # adaptive norms: the same condition for both
        bind_condition(net.attn_layers)
    same_outputs(model, rebuilt, torch.randint(0, 20, (2, 6)))


def test_other_wrappers_round_trip():
    torch.manual_seed(0)
    vit = ViTransformerWrapper(
        image_size=8, patch_size=4, num_classes=3, attn_layers=Encoder(dim=16, depth=1, heads=2)
    )
    same_outputs(vit, json_round_trip(vit), torch.randn(1, 3, 8, 8))
    cont = ContinuousTransformerWrapper(
        max_seq_len=8, dim_in=3, dim_out=5, attn_layers=Encoder(dim=16, depth=1, macaron=True)
    )
    same_outputs(cont, json_round_trip(cont), torch.randn(2, 4, 3))
    xt = XTransformer(
        dim=16,
        enc_num_tokens=10,
        enc_max_seq_len=8,
        enc_depth=1,
        dec_num_tokens=10,
        dec_max_seq_len=8,
        dec_depth=1,
        tie_token_emb=True,
    )
    src, tgt = torch.randint(0, 10, (2, 5)), torch.randint(0, 10, (2, 4))
    same_outputs(xt, json_round_trip(xt), src, tgt)


def test_autoregressive_wrapper_keeps_its_options():
    net = TransformerWrapper(
        num_tokens=20, max_seq_len=16, attn_layers=Decoder(dim=16, depth=1, heads=2)
    )
    wrapper = AutoregressiveWrapper(net, ignore_index=3, pad_value=2)
    rebuilt = json_round_trip(wrapper)
    assert (rebuilt.ignore_index, rebuilt.pad_value) == (3, 2)
    assert to_config(rebuilt) == to_config(wrapper)


def test_refusals():
    with pytest.raises(TypeError, match="not an x_attn model class"):
        to_config(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown model type 'Nope'"):
        from_config({"type": "Nope", "kwargs": {}})
    with pytest.raises(ValueError, match="exactly the keys 'type' and 'kwargs'"):
        from_config({"type": "Decoder"})


def test_new_wrapper_options_round_trip():
    """Wrapper options added for x-transformers compatibility survive to_config / from_config."""
    torch.manual_seed(0)
    x, seg = torch.randint(0, 20, (2, 5)), torch.randint(0, 3, (2, 5))
    pooled = TransformerWrapper(
        num_tokens=20,
        max_seq_len=8,
        attn_pool=True,
        num_pooled_tokens=2,
        attn_layers=Encoder(dim=16, depth=1, heads=2),
    )
    same_outputs(pooled, json_round_trip(pooled), x)
    segments = TransformerWrapper(
        num_tokens=20,
        max_seq_len=8,
        embed_num_tokens={"segment": 3},
        attn_layers=Encoder(dim=16, depth=1, heads=2),
    ).eval()
    rebuilt = json_round_trip(segments).eval()
    rebuilt.load_state_dict(segments.state_dict())
    ids = {"segment": seg}
    torch.testing.assert_close(segments(x, embed_ids=ids), rebuilt(x, embed_ids=ids))
    prob = ContinuousTransformerWrapper(
        max_seq_len=8, dim_in=3, dim_out=2, probabilistic=True, attn_layers=Encoder(dim=16, depth=1)
    )
    same_outputs(prob, json_round_trip(prob), torch.randn(2, 4, 3))
    vit = ViTransformerWrapper(
        image_size=8,
        patch_size=4,
        num_register_tokens=2,
        post_emb_norm=True,
        attn_layers=Encoder(dim=16, depth=1, heads=2),
    )
    same_outputs(vit, json_round_trip(vit), torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize(
    "activation",
    [torch.nn.GELU(approximate="tanh"), torch.nn.LeakyReLU(0.2), torch.nn.ELU(alpha=0.5)],
    ids=repr,
)
def test_activation_with_constructor_arguments_round_trips(activation):
    """nn.GELU(approximate="tanh") (GPT-2's gelu_new) and the like keep their arguments."""
    stack = Decoder(dim=8, depth=1, heads=2, ff_custom_activation=activation)
    rebuilt = from_config(json.loads(json.dumps(to_config(stack))))
    assert repr(rebuilt.layers[1].block.act) == repr(activation)
    x = torch.linspace(-3, 3, 7)
    assert torch.equal(rebuilt.layers[1].block.act(x), activation(x))
