"""LASER attention (arXiv 2411.03493, x-transformers' attn_laser): the layer against
log(softmax(q k^T / sqrt(dh)) exp(c tanh(v / c))) written here in float64, the cache, rows with
no key, half precision, and the refusals.

Shape legend: b batch, n tokens, h heads, d model dim, dh head dim.
"""

from __future__ import annotations

import math

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


def _extreme_layer(dtype: torch.dtype, flash) -> tuple[Attention, torch.Tensor]:
    """A causal layer whose values are its inputs (to_v = to_out = identity) and inputs of
    +-30: in features 0-3 every key is -30, in features 4-7 the first three keys are -30 and
    the later ones +30 (a max over all keys would come from keys the early queries may not
    see), the rest random signs."""
    torch.manual_seed(2)
    layer = Attention(D, H, causal=True, dim_head=DH, laser=True, flash=flash)
    with torch.no_grad():
        layer.proj.to_q.weight.mul_(0.05)  # logits of a few units: the weights mix keys
        layer.proj.to_v.weight.copy_(torch.eye(D))
        layer.to_out.weight.copy_(torch.eye(D))
    x = 60.0 * torch.randint(0, 2, (B, N, D), generator=torch.Generator().manual_seed(3)) - 30
    x[..., :4] = -30.0
    x[:, :3, 4:8], x[:, 3:, 4:8] = -30.0, 30.0
    return layer.to(dtype), x.to(dtype)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("flash", [None, False])
@pytest.mark.parametrize(
    ("dtype", "atol"),
    [(torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 0.15)],
)
def test_extreme_values_in_every_dtype_match_the_float64_formula(
    dtype, atol, flash, autocast: bool
) -> None:
    """Values of +-30 (soft-capped to +-14.46): exp(s - 15) spans 30 nats, beyond float16's
    range. The layer in ``dtype`` (or a float32 layer under autocast to ``dtype``) against the
    formula in float64 over the same (rounded) weights and inputs; the rows that see only -30
    values must come out at -14.46, not 0."""
    if autocast and dtype == torch.float32:
        pytest.skip("autocast runs in a half dtype")
    layer, x = _extreme_layer(torch.float32 if autocast else dtype, flash)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=autocast):
        out = layer(x)
    with torch.no_grad():
        expected = laser_reference(layer.double(), x.double(), 15.0)
    low = 15 * math.tanh(-30 / 15)  # -14.46: a query that sees only -30 values gets this
    assert (expected[..., :4] - low).abs().max() < 1e-9
    assert (expected[:, :3, 4:8] - low).abs().max() < 1e-9  # the later +30 keys are masked
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_cached_decode_equals_full_and_float64(dtype) -> None:
    """Decode in half precision (the cache holds the exp values) equals the full forward, and
    both stay near the float64 network."""
    net, x = build(flag_case("attn_laser")), tokens(2, 9)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 2 and p.shape[0] != p.shape[1]:
                p.mul_(4)  # values of several units, as a trained model has
        exact = net(x)
        net = net.to(dtype)
        full = net(x)
        stepped, _ = prefill_then_steps(net, x, 5)
    scale = float(exact.abs().max())
    torch.testing.assert_close(stepped.double(), full.double(), atol=0.02 * scale, rtol=0)
    torch.testing.assert_close(full.double(), exact, atol=0.05 * scale, rtol=0)


@pytest.mark.parametrize("flash", [None, False])
def test_additional_values_go_through_the_exp_too(flash) -> None:
    """Call-time additional key/values are free keys in front whose values are averaged as
    exp values like the layer's own: log(softmax(q [k_a; k]^T) exp(c tanh([v_a; v] / c)))."""
    c = 3.0
    torch.manual_seed(0)
    layer = Attention(
        D, H, causal=True, dim_head=DH, laser=True, laser_softclamp_value=c, flash=flash
    )
    layer = layer.double()
    x = torch.randn(B, N, D, dtype=torch.float64) * 2
    g = torch.Generator().manual_seed(1)
    extra_k, extra_v = (
        torch.randn(B, H, 3, DH, generator=g, dtype=torch.float64) * 3 for _ in "kv"
    )
    out = layer(x, additional_key_values=(extra_k, extra_v))
    proj = layer.proj
    q, k, v = (
        rearrange(x @ w.weight.T, "b n (h e) -> b h n e", h=H)
        for w in (proj.to_q, proj.to_k, proj.to_v)
    )
    keys, values = torch.cat((extra_k, k), -2), torch.cat((extra_v, v), -2)
    visible = torch.ones(N, 3 + N, dtype=torch.bool)
    visible[:, 3:] = torch.ones(N, N, dtype=torch.bool).tril()
    scores = (q @ keys.transpose(-1, -2) / math.sqrt(DH)).masked_fill(~visible, -math.inf)
    heads = torch.log(scores.softmax(-1) @ torch.exp(c * torch.tanh(values / c)))
    expected = rearrange(heads, "b h n e -> b n (h e)") @ layer.to_out.weight.T
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)


def test_a_clamp_beyond_the_dtype_is_refused_and_float64_holds_it() -> None:
    """c = 50: exp(s - c) reaches e^-100, below float32's smallest normal (e^-87.3). A float32
    call is refused naming the flag; in float64 the layer equals the formula, including a row
    that sees only very negative values (which float32 would have zeroed)."""
    torch.manual_seed(0)
    layer = Attention(D, H, causal=True, dim_head=DH, laser=True, laser_softclamp_value=50.0)
    x = torch.randn(B, N, D) * 4
    with pytest.raises(ValueError, match=r"laser_softclamp_value=50.*float32.*<= 43\.6"):
        layer(x)
    layer, x = layer.double(), x.double() * 30
    torch.testing.assert_close(layer(x), laser_reference(layer, x, 50.0), atol=1e-8, rtol=0)
