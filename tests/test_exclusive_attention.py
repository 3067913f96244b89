"""Exclusive self-attention (XSA, arXiv 2603.09078; x-transformers' attn_orthog_projected_values):
the layer against the paper's formula written here in float64, per token, per head and over
all heads, with grouped key/value heads; causality and the cache through the registry cases.

Shape legend: b batch, n tokens, h heads, hk key/value heads, d model dim, dh head dim.
"""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from flag_models import build, prefill_then_steps, tokens
from reference import reference_attention
from torch import Tensor

from x_attn import Attention, Decoder
from x_attn.registry import flag_case

B, N, D, H, DH = 2, 6, 16, 4, 8


def exclude(y: Tensor, v: Tensor) -> Tensor:
    """z = y - (y . v) v / (v . v), over the last dim."""
    return y - (y * v).sum(-1, keepdim=True) / (v * v).sum(-1, keepdim=True) * v


def xsa_reference(layer: Attention, x: Tensor, kv_heads: int, whole: bool, per_head: bool):
    proj = layer.proj
    q = rearrange(x @ proj.to_q.weight.T, "b n (h e) -> b h n e", h=H)
    k, v = (
        rearrange(x @ w.weight.T, "b n (h e) -> b h n e", h=kv_heads)
        for w in (proj.to_k, proj.to_v)
    )
    y = reference_attention(q, k, v, causal=True)  # (b h n e)
    own = v.repeat_interleave(H // kv_heads, dim=1)  # query head t reads kv head t // (h / hk)
    parts = []
    if whole:
        flat = lambda t: rearrange(t, "b h n e -> b n (h e)")  # noqa: E731
        parts.append(exclude(flat(y), flat(own)))
    if per_head:
        parts.append(rearrange(exclude(y, own), "b h n e -> b n (h e)"))
    return torch.cat(parts, dim=-1) @ layer.to_out.weight.T


@pytest.mark.parametrize(("whole", "per_head"), [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("kv_heads", [H, 2])
def test_layer_equals_the_formula(whole: bool, per_head: bool, kv_heads: int) -> None:
    torch.manual_seed(0)
    layer = Attention(
        D,
        H,
        causal=True,
        dim_head=DH,
        kv_heads=kv_heads,
        orthog_projected_values=whole,
        orthog_projected_values_per_head=per_head,
    ).double()
    assert layer.to_out.in_features == H * DH * (int(whole) + int(per_head))
    x = torch.randn(B, N, D, dtype=torch.float64)
    expected = xsa_reference(layer, x, kv_heads, whole, per_head)
    torch.testing.assert_close(layer(x), expected, atol=1e-12, rtol=0)


def test_output_is_orthogonal_to_own_value_and_zero_value_is_kept() -> None:
    torch.manual_seed(1)
    y, v = torch.randn(3, 5, 8, dtype=torch.float64), torch.randn(3, 5, 8, dtype=torch.float64)
    from x_attn.attention.features.exclusive import without_own_direction

    z = without_own_direction(y, v)
    assert (z * v).sum(-1).abs().max() < 1e-12
    v[0, 0] = 0.0  # a zero value: nothing to remove, no NaN
    z = without_own_direction(y, v)
    torch.testing.assert_close(z[0, 0], y[0, 0], atol=0, rtol=0)
    half = without_own_direction(y.to(torch.bfloat16), v.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()


@pytest.mark.parametrize(
    "name", ["attn_orthog_projected_values", "attn_orthog_projected_values_per_head"]
)
def test_decoder_is_causal_and_cached_decode_equals_full(name: str) -> None:
    net, x = build(flag_case(name)), tokens(2, 9)
    with torch.no_grad():
        full = net(x)
        changed = x.clone()
        changed[:, 5:] = (changed[:, 5:] + 1) % 20
        torch.testing.assert_close(net(changed)[:, :5], full[:, :5], atol=1e-12, rtol=0)
        stepped, _ = prefill_then_steps(net, x, 5)
    torch.testing.assert_close(stepped, full, atol=1e-9, rtol=0)


@pytest.mark.parametrize(
    ("flags", "pattern"),
    [
        (
            {"cross_attend": True, "cross_attn_orthog_projected_values": True},
            "cross-attention query has no value of its own",
        ),
        (
            {"attn_orthog_projected_values": True, "attn_on_attn": True},
            "attn_on_attn and attn_orthog_projected_values both replace",
        ),
        (
            {
                "attn_orthog_projected_values_per_head": True,
                "attn_use_latent_kv": True,
                "attn_dim_latent_kv": 8,
            },
            "forms no per-head values",
        ),
        (
            {"attn_orthog_projected_values": True, "attn_out_bias": True},
            "attn_out_bias adds biases",
        ),
    ],
)
def test_refusals_name_the_flags(flags, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        Decoder(dim=D, depth=1, heads=H, **flags)
