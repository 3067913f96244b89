"""Soft-capping (Gemma 2, arXiv 2408.00118) and null keys (zero key/value; learned attention
sinks of gpt-oss, arXiv 2508.10925) against their formulas, in float64 from the weights.

Shape legend: b batch, h heads, i queries, j keys, d head dim, dm model dim.
"""

from __future__ import annotations

import pytest
import torch
from reference import reference_attention
from test_attention_features import DIM_HEAD, close, hand_qkv, inputs, make, project_out
from torch import nn

from x_attn import Decoder
from x_attn.positional.alibi import AlibiPositionalBias
from x_attn.positional.context import PositionContext


def causal_logits(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scaled logits, causal visibility) of (b h i d), (b h j d)."""
    logits = torch.einsum("bhid,bhjd->bhij", q, k) * DIM_HEAD**-0.5
    i, j = logits.shape[-2:]
    return logits, torch.ones(i, j, dtype=torch.bool).tril(j - i)


# ---------------------------------------------------------------- soft-capping


@pytest.mark.parametrize("value", [0.5, 3.0])
def test_softclamp_logits_is_tanh_capping_before_softmax(value):
    attn = make(softclamp_logits=True, logit_softclamp_value=value, causal=True).eval()
    x = inputs(spread=3.0)
    q, k, v = hand_qkv(attn, x)
    logits, visible = causal_logits(q, k)
    capped = value * torch.tanh(logits / value)
    probs = capped.masked_fill(~visible, float("-inf")).softmax(-1)
    out, inter = attn(x, return_attn=True)
    close(out, project_out(attn, probs @ v))
    close(inter.probs, probs)
    assert inter.logits.abs().max() <= value  # what residual attention would hand on
    assert attn.explain() == "manual: attn_softclamp_logits need(s) the raw attention scores"
    with pytest.raises(ValueError, match="attn_flash=True.*attn_softclamp_logits"):
        Decoder(dim=16, depth=1, attn_softclamp_logits=True, attn_flash=True)


def test_softclamp_output_caps_the_stack_output_before_the_final_norm():
    torch.manual_seed(0)
    capped = Decoder(dim=16, depth=2, heads=2, softclamp_output=True, softclamp_output_value=0.7)
    plain = Decoder(dim=16, depth=2, heads=2)
    plain.load_state_dict(capped.state_dict())
    final_norm, plain.final_norm = plain.final_norm, nn.Identity()
    x = torch.randn(2, 5, 16) * 4
    with torch.no_grad():
        before = plain(x)
        expected = final_norm(0.7 * torch.tanh(before / 0.7))
        torch.testing.assert_close(capped(x), expected)
    assert before.abs().max() > 0.7  # the cap bites


def test_softclamp_value_without_its_flag_is_refused():
    with pytest.raises(ValueError, match="attn_logit_softclamp_value=2.0' has no effect"):
        Decoder(dim=16, depth=1, attn_logit_softclamp_value=2.0)
    with pytest.raises(ValueError, match="must be > 0"):
        Decoder(dim=16, depth=1, attn_softclamp_logits=True, attn_logit_softclamp_value=0.0)


# ---------------------------------------------------------------- null keys


@pytest.mark.parametrize("flash", [None, False])
def test_zero_kv_adds_one_to_the_softmax_denominator(flash):
    attn = make(add_zero_kv=True, causal=True, flash=flash).eval()
    x = inputs()
    q, k, v = hand_qkv(attn, x)
    logits, visible = causal_logits(q, k)
    weights = logits.exp() * visible
    out = (weights @ v) / (1.0 + weights.sum(-1, keepdim=True))
    close(attn(x), project_out(attn, out))
    assert attn.explain().startswith("manual" if flash is False else "sdpa")


@pytest.mark.parametrize("flash", [None, False])
@pytest.mark.parametrize("masked", [False, True])
def test_learned_sink_adds_exp_sink_per_head(flash, masked):
    attn = make(head_learned_sink=True, causal=True, flash=flash).eval()
    with torch.no_grad():
        attn.head_learned_sink.sink.copy_(torch.tensor([1.5, -0.7], dtype=torch.float64))
    x = inputs()
    pad = torch.ones(2, x.shape[1], dtype=torch.bool)
    if masked:
        pad[0, 1] = False
    q, k, v = hand_qkv(attn, x)
    logits, visible = causal_logits(q, k)
    weights = logits.exp() * visible * pad[:, None, None, :]
    sink = torch.tensor([1.5, -0.7], dtype=torch.float64).exp()[None, :, None, None]
    out = (weights @ v) / (sink + weights.sum(-1, keepdim=True))
    close(attn(x, mask=pad), project_out(attn, out))
    _, inter = attn(x, mask=pad, return_attn=True)
    close(inter.probs[..., 0:1], sink / (sink + weights.sum(-1, keepdim=True)))


def test_null_keys_stack_with_memory_and_positions():
    """Sink, zero key, memory key/values and an ALiBi bias: every key in one reference."""
    attn = make(num_mem_kv=2, add_zero_kv=True, head_learned_sink=True, causal=True).eval()
    with torch.no_grad():
        attn.head_learned_sink.sink.copy_(torch.tensor([0.4, -1.0], dtype=torch.float64))
    x = inputs()
    pos = torch.arange(5)
    alibi = AlibiPositionalBias(2)(pos, pos).to(torch.float64)  # (h, i, j)
    out, inter = attn(x, positions=PositionContext(5, 5, bias=alibi), return_attn=True)
    q, k, v = hand_qkv(attn, x)
    mem_k = attn.memory_kv.mem_k.expand(2, -1, -1, -1)
    mem_v = attn.memory_kv.mem_v.expand(2, -1, -1, -1)
    zeros = torch.zeros(2, 2, 2, DIM_HEAD, dtype=torch.float64)  # sink, zero key
    keys, values = torch.cat((zeros, mem_k, k), -2), torch.cat((zeros, mem_v, v), -2)
    bias = torch.nn.functional.pad(alibi, (4, 0))
    bias[..., 0] = torch.tensor([0.4, -1.0], dtype=torch.float64)[:, None]
    visible = torch.ones(5, 9, dtype=torch.bool)
    visible[:, 4:] = torch.ones(5, 5, dtype=torch.bool).tril()
    expected = reference_attention(q, keys, values, mask=visible, bias=bias)
    close(out, project_out(attn, expected))
    assert inter.probs.shape == (2, 2, 5, 9)  # sink, zero key, 2 memory slots, 5 keys
