"""Options that no sublayer of the stack reads are refused at construction (x_attn/layer_plan.py).

A stack's plan is its layer letters ('a' self-attention, 'c' cross-attention, 'f' feed-forward).
Every ``ff_*`` option (read by 'f'), ``attn_*`` option (read by 'a' and 'c') and
``cross_attn_*`` option (read by 'c') the user sets explicitly, whatever its value, is refused
with a ValueError naming it and the plan's origin (``custom_layers`` or ``cross_attend``) when
the plan has no layer that reads it; the options are taken from the routing, so flags added
later are covered. Where the plan has the layer, the option is accepted and changes the model.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest
import torch

from x_attn import CrossAttender, Decoder, Encoder, TransformerWrapper
from x_attn.config import AttentionConfig, FeedForwardConfig

DIM = 16
ATTN = {f.name: f.default for f in fields(AttentionConfig)}
FF = {f.name: f.default for f in fields(FeedForwardConfig)}
# every option of each prefix, at its default value: set explicitly, even a default is refused
FF_OPTIONS = {f"ff_{name}": value for name, value in FF.items()}
ATTN_OPTIONS = {f"attn_{name}": value for name, value in ATTN.items()}
CROSS_OPTIONS = {f"cross_attn_{name}": value for name, value in ATTN.items()}


def _refused(stack: type, names: tuple[str, ...], **flags: Any) -> str:
    """The message of the ValueError ``stack(dim=DIM, depth=1, **flags)`` raises; it names all
    of ``names``."""
    with pytest.raises(ValueError) as info:
        stack(dim=DIM, **{"depth": 1, **flags})
    message = str(info.value)
    for name in names:
        assert name in message, message
    return message


def _plan_names(option: str, value: Any, legal_where: dict, *plan: str) -> tuple[str, ...]:
    """What the refusal must name: the option, and the plan (``plan``) unless the option is
    refused even on the layer that reads it (``Decoder(**legal_where)``: e.g.
    cross_attn_latent_rope_subheads, which the config refuses first)."""
    try:
        Decoder(dim=DIM, depth=1, **legal_where, **{option: value})
    except ValueError as error:
        assert option in str(error), error
        return (option,)
    return (option, *plan)


@pytest.mark.parametrize("option", sorted(FF_OPTIONS))
def test_feedforward_options_without_a_feedforward_layer(option: str) -> None:
    value = FF_OPTIONS[option]
    names = _plan_names(option, value, {}, "custom_layers ('a', 'a')", "add 'f' to custom_layers")
    _refused(Decoder, names, depth=2, custom_layers=("a", "a"), **{option: value})


@pytest.mark.parametrize("option", sorted(ATTN_OPTIONS))
def test_attention_options_without_an_attention_layer(option: str) -> None:
    value = ATTN_OPTIONS[option]
    names = _plan_names(option, value, {}, "custom_layers ('f', 'f')", "add 'a' to custom_layers")
    _refused(Encoder, names, custom_layers=("f", "f"), **{option: value})


@pytest.mark.parametrize("option", sorted(CROSS_OPTIONS))
def test_cross_attention_options_without_a_cross_attention_layer(option: str) -> None:
    value = CROSS_OPTIONS[option]
    legal_where = {"cross_attend": True}
    _refused(
        Decoder, _plan_names(option, value, legal_where, "cross_attend=True"), **{option: value}
    )
    names = _plan_names(option, value, legal_where, "custom_layers ('a', 'f')", "add 'c'")
    _refused(Encoder, names, custom_layers=("a", "f"), **{option: value})


def test_cross_residual_attn_without_a_cross_attention_layer() -> None:
    _refused(Decoder, ("cross_residual_attn", "cross_attend=True"), cross_residual_attn=True)


def _net(layers: Any, seed: int = 0) -> TransformerWrapper:
    torch.manual_seed(seed)
    net = TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=layers).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net


@pytest.mark.parametrize(
    ("build", "flags"),
    [
        (lambda **kw: Decoder(dim=DIM, depth=1, custom_layers=("a", "f"), **kw), {"ff_glu": True}),
        (lambda **kw: CrossAttender(dim=DIM, depth=1, **kw), {"attn_talking_heads": True}),
        (
            lambda **kw: Encoder(
                dim=DIM, depth=1, custom_layers=("c", "f"), cross_attend=True, **kw
            ),
            {"cross_attn_talking_heads": True},
        ),
    ],
    ids=["ff-with-f", "attn-with-only-c", "cross-attn-with-c"],
)
def test_options_accepted_where_a_layer_reads_them(build: Any, flags: dict) -> None:
    """The refusal is not a blanket one: with the reading layer present, the option acts."""
    x = torch.randint(0, 10, (2, 5), generator=torch.Generator().manual_seed(1))
    context = torch.randn(2, 4, DIM, dtype=torch.float64)
    kw = {} if "ff_glu" in flags else {"context": context}
    with torch.no_grad():
        on, off = _net(build(**flags))(x, **kw), _net(build())(x, **kw)
    assert not torch.allclose(on, off)


def test_decoder_without_self_attention_names_custom_layers() -> None:
    message = _refused(Decoder, ("custom_layers",), custom_layers=("f", "f"))
    assert "add 'a' to custom_layers" in message


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (
            dict(heads=1, attn_dim_head=4, attn_collab_heads=True, attn_collab_compression=0.25),
            "attn_collab_compression",
        ),
        (dict(heads=2, attn_dim_head=1), "attn_dim_head"),
    ],
    ids=["collab", "dim_head"],
)
def test_rotary_on_a_one_dim_query_key_head(flags: dict, named: str) -> None:
    message = _refused(
        Decoder, ("rotary_pos_emb", "head dim is 1", named), rotary_pos_emb=True, **flags
    )
    assert "at least 2" in message
    Decoder(dim=DIM, depth=1, **flags)  # without rotary the head is legal


def test_rotary_dim_follows_the_self_attention_head_when_cross_attention_comes_first() -> None:
    """Rotary acts on self-attention: its default dim (max(dim_head / 2, 32), capped at the
    head) comes from attn_dim_head=64, not from a cross-attention layer placed first."""
    flags = dict(cross_attend=True, custom_layers=("c", "a", "f"), rotary_pos_emb=True)
    stack = Decoder(dim=DIM, depth=1, attn_dim_head=64, cross_attn_dim_head=4, **flags)
    assert stack.positions.rotary.dim == 32
