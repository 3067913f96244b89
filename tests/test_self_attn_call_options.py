"""Per-call options of self-attention (x-transformers' forward keywords of the stack).

``causal=`` overrides the stack's causality for one call; ``self_attn_kv_mask`` hides keys of
self-attention; ``self_attn_additional_kv`` prepends keys/values without positions (another
model's cache, say), routed to the top layers, optionally masked and detached.

Shape legend: b batch, h heads, n / i queries, j keys, m additional keys, d head dim.
"""

from __future__ import annotations

import pytest
import torch
from reference import reference_attention
from test_attention_features import close, hand_qkv, inputs, make, project_out
from test_stack_flags import SMALL, D, rand, randomize

from x_attn import Decoder, Encoder, TransformerWrapper
from x_attn.positional.context import PositionContext
from x_attn.positional.rotary import RotaryEmbedding


def twins(**flags):
    """A Decoder and an Encoder with the same weights."""
    dec = randomize(Decoder(depth=2, **SMALL, **flags))
    enc = randomize(Encoder(depth=2, **SMALL, **flags))
    enc.load_state_dict(dec.state_dict())
    return dec, enc


@pytest.mark.parametrize("flags", [{}, dict(rotary_pos_emb=True), dict(attn_flash=False)])
def test_causal_override_turns_a_decoder_into_its_encoder_and_back(flags):
    dec, enc = twins(**flags)
    x = rand(2, 6, D)
    close(dec(x, causal=False), enc(x))
    close(enc(x, causal=True), dec(x))
    assert (dec(x) - enc(x)).abs().max() > 1e-3


def test_causal_override_through_the_wrapper():
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=11, max_seq_len=8, attn_layers=Decoder(**SMALL, depth=1))
    twin = TransformerWrapper(num_tokens=11, max_seq_len=8, attn_layers=Encoder(**SMALL, depth=1))
    twin.load_state_dict(model.state_dict())
    toks = torch.randint(0, 11, (2, 6))
    torch.testing.assert_close(model(toks, causal=False), twin(toks))


def test_causal_override_refusals():
    dec, _ = twins()
    x = rand(2, 4, D)
    _, inter = dec(x, return_hiddens=True)
    with pytest.raises(ValueError, match="causal=False with a KV cache"):
        dec(x[:, :1], cache=inter, causal=False, return_hiddens=True)
    dec(x[:, :1], cache=inter, causal=True, return_hiddens=True)  # the stack's own is fine
    # a call that overrides the causality starts no cache: its keys continue no causal sequence
    assert dec(x, causal=False, return_hiddens=True)[1].cache is None
    assert inter.cache is not None
    with pytest.raises(TypeError, match="'causal' must be"):
        dec(x, causal=1)
    with pytest.raises(ValueError, match="cross-attention call"):
        make()(x, context=x, causal=True)


def test_self_attn_kv_mask_equals_the_same_attention_mask():
    dec, _ = twins()
    x = rand(2, 6, D)
    keys = torch.ones(2, 6, dtype=torch.bool)
    keys[0, 2] = keys[1, 4] = False
    close(
        dec(x, self_attn_kv_mask=keys), dec(x, attn_mask=keys[:, None, None, :].expand(2, 1, 6, 6))
    )
    assert (dec(x, self_attn_kv_mask=keys) - dec(x)).abs().max() > 1e-3
    both = torch.ones(6, 6, dtype=torch.bool).tril(1)
    combined = dec(x, self_attn_kv_mask=keys, attn_mask=both)
    close(combined, dec(x, attn_mask=both[None, None] & keys[:, None, None, :]))


def test_self_attn_kv_mask_covers_cached_keys():
    dec, _ = twins()
    x = rand(2, 6, D)
    keys = torch.ones(2, 6, dtype=torch.bool)
    keys[:, 1] = False
    outs, cache = [], dec.new_cache()
    for start, stop in ((0, 4), (4, 5), (5, 6)):
        out, inter = dec(
            x[:, start:stop], cache=cache, self_attn_kv_mask=keys[:, :stop], return_hiddens=True
        )
        outs.append(out)
        cache = inter.cache
    close(torch.cat(outs, dim=1), dec(x, self_attn_kv_mask=keys))
    with pytest.raises(ValueError, match="'self_attn_kv_mask' must have shape \\(2, 6\\)"):
        dec(x, self_attn_kv_mask=keys[:, :5])


# ---------------------------------------------------------------- additional key / values


@pytest.mark.parametrize("extra_heads", [2, 1])
@pytest.mark.parametrize("flash", [None, False])
def test_additional_kv_are_free_keys_in_front(extra_heads, flash):
    attn = make(causal=True, flash=flash).eval()
    x = inputs(n=5)
    g = torch.Generator().manual_seed(4)
    extra_k = torch.randn(2, extra_heads, 3, 8, generator=g, dtype=torch.float64)
    extra_v = torch.randn(2, extra_heads, 3, 8, generator=g, dtype=torch.float64)
    kv_mask = torch.tensor([[True, False, True], [False, True, True]])
    rotary = RotaryEmbedding(8)(torch.arange(5), dtype=torch.float64)
    out = attn(
        x,
        positions=PositionContext(5, 5, rotary=rotary),
        additional_key_values=(extra_k, extra_v),
        additional_key_value_mask=kv_mask,
    )
    q, k, v = hand_qkv(attn, x)
    q, k = rotate(q, rotary), rotate(k, rotary)  # own keys only: the extra ones have no position
    visible = torch.ones(2, 1, 5, 8, dtype=torch.bool)
    visible[..., :3] = kv_mask[:, None, None, :]
    visible[..., 3:] = torch.ones(5, 5, dtype=torch.bool).tril()
    heads = 2 // extra_heads
    keys = torch.cat((extra_k.repeat_interleave(heads, 1), k), -2)
    values = torch.cat((extra_v.repeat_interleave(heads, 1), v), -2)
    close(out, project_out(attn, reference_attention(q, keys, values, mask=visible)))


def rotate(t: torch.Tensor, angles) -> torch.Tensor:
    """Rotary by hand on the whole head dim: pairs (x_i, x_{i + d/2}) rotated by the angles
    (n, d/2) of RoFormer."""
    angles = torch.cat((angles, angles), dim=-1)
    cos, sin = angles.cos(), angles.sin()
    half = t.shape[-1] // 2
    rotated = torch.cat((-t[..., half:], t[..., :half]), dim=-1)
    return t * cos + rotated * sin


def pairs(layers: int, seed: int = 5, m: int = 3):
    g = torch.Generator().manual_seed(seed)
    return [
        tuple(torch.randn(2, 2, m, 8, generator=g, dtype=torch.float64) for _ in range(2))
        for _ in range(layers)
    ]


def test_additional_kv_routing_to_top_and_bottom():
    dec = randomize(Decoder(depth=3, **SMALL))
    x = rand(2, 4, D)
    one = pairs(1)
    close(dec(x, self_attn_additional_kv=one), dec(x, self_attn_additional_kv=[None, None, *one]))
    bottom = dec(x, self_attn_additional_kv=one, route_additional_kv_to_top=False)
    close(bottom, dec(x, self_attn_additional_kv=[*one, None, None]))
    assert (bottom - dec(x, self_attn_additional_kv=one)).abs().max() > 1e-3
    four = pairs(4)
    close(dec(x, self_attn_additional_kv=four), dec(x, self_attn_additional_kv=four[1:]))
    with pytest.raises(ValueError, match="4 additional key/value pairs for 3"):
        dec(x, self_attn_additional_kv=four, route_additional_kv_to_top=False)


def test_additional_kv_from_intermediates_and_detached():
    torch.manual_seed(0)
    source = TransformerWrapper(num_tokens=11, max_seq_len=8, attn_layers=Decoder(**SMALL, depth=2))
    source = source.double()
    _, inter = source(torch.randint(0, 11, (2, 5)), return_intermediates=True)
    kvs = [(e.k, e.v) for e in inter.cache.entries]
    dec = randomize(Decoder(depth=3, **SMALL))
    x = rand(2, 4, D)
    mask = torch.rand(2, 5, generator=torch.Generator().manual_seed(1)) > 0.3
    expected = dec(x, self_attn_additional_kv=kvs, additional_kv_mask=mask)
    close(dec(x, self_attn_additional_kv=inter, additional_kv_mask=mask), expected)
    leaf = [tuple(t.detach().requires_grad_() for t in kv) for kv in kvs]
    dec(x, self_attn_additional_kv=leaf, detach_additional_kv=True).sum().backward()
    assert all(t.grad is None for kv in leaf for t in kv)
    dec(x, self_attn_additional_kv=leaf).sum().backward()
    assert all(t.grad is not None for kv in leaf for t in kv)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(additional_kv_mask=torch.ones(2, 3, dtype=torch.bool)), ValueError, "without"),
        (dict(self_attn_additional_kv=torch.zeros(2)), TypeError, "must be a list"),
        (dict(self_attn_additional_kv=[(torch.zeros(2, 2, 3, 7),) * 2]), ValueError, "shape"),
        (dict(self_attn_additional_kv=[(torch.zeros(2, 3, 3, 8),) * 2]), ValueError, "dividing"),
        (dict(self_attn_additional_kv=[(torch.zeros(2, 2, 3, 8),) * 2]), TypeError, "float64"),
        (
            dict(
                self_attn_additional_kv=pairs(1),
                additional_kv_mask=torch.ones(2, 4, dtype=torch.bool),
            ),
            ValueError,
            "additional_kv_mask' must have shape",
        ),
    ],
)
def test_additional_kv_refusals(kwargs, error, match):
    dec = randomize(Decoder(depth=1, **SMALL))
    with pytest.raises(error, match=match):
        dec(rand(2, 4, D), **kwargs)
