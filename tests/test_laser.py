"""LASER attention (arXiv 2411.03493, x-transformers' attn_laser): the layer against
log(softmax(q k^T / sqrt(dh)) exp(c tanh(v / c))) written here in float64, the cache, rows with
no key, half precision, and the refusals.

Shape legend: b batch, n tokens, h heads, d model dim, dh head dim.
"""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from flag_models import build, prefill_then_steps, tokens
from reference import reference_probs

from x_attn import Attention, Decoder
from x_attn.registry import flag_case

B, N, D, H, DH = 2, 6, 16, 2, 8


def laser_reference(layer: Attention, x: torch.Tensor, c: float, mask=None) -> torch.Tensor:
    proj = layer.proj
    q, k, v = (
        rearrange(x @ w.weight.T, "b n (h e) -> b h n e", h=H)
        for w in (proj.to_q, proj.to_k, proj.to_v)
    )
    probs = reference_probs(q, k, v, mask=mask, causal=True)
    heads = torch.log(probs @ torch.exp(c * torch.tanh(v / c)))
    return rearrange(heads, "b h n e -> b n (h e)") @ layer.to_out.weight.T


@pytest.mark.parametrize("c", [15.0, 2.0])
@pytest.mark.parametrize("flash", [None, False])
def test_layer_equals_the_formula(c: float, flash) -> None:
    torch.manual_seed(0)
    layer = Attention(
        D, H, causal=True, dim_head=DH, laser=True, laser_softclamp_value=c, flash=flash
    )
    layer = layer.double()
    x = torch.randn(B, N, D, dtype=torch.float64) * 4
    torch.testing.assert_close(layer(x), laser_reference(layer, x, c), atol=1e-10, rtol=0)


def test_cached_decode_equals_full_and_causal() -> None:
    net, x = build(flag_case("attn_laser")), tokens(2, 9)
    with torch.no_grad():
        full = net(x)
        stepped, _ = prefill_then_steps(net, x, 5)
    torch.testing.assert_close(stepped, full, atol=1e-9, rtol=0)


def test_row_without_keys_is_zero_and_half_precision_is_finite() -> None:
    torch.manual_seed(1)
    layer = Attention(D, H, dim_head=DH, laser=True, flash=False)
    x = torch.randn(1, 4, D) * 30
    attn_mask = torch.ones(4, 4, dtype=torch.bool)
    attn_mask[2] = False  # query 2 sees nothing
    out = layer(x, attn_mask=attn_mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 2], torch.zeros(D), atol=0, rtol=0)
    for dtype in (torch.float16, torch.bfloat16):
        half = layer.to(dtype)(x.to(dtype))
        assert torch.isfinite(half).all(), dtype
        half.float().sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
        layer.zero_grad()


@pytest.mark.parametrize(
    ("flags", "pattern"),
    [
        ({"attn_num_mem_kv": 2}, "attn_num_mem_kv break that"),
        ({"attn_cog_signed": True}, "attn_cog_signed break that"),
        ({"attn_talking_heads": True}, "attn_talking_heads break that"),
        ({"attn_laser_softclamp_value": 0.0}, "attn_laser_softclamp_value must be > 0"),
    ],
)
def test_refusals_name_the_flags(flags, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        Decoder(dim=D, depth=1, heads=H, attn_laser=True, **flags)
