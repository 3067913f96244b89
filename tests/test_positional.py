"""Tests for x_attn.positional: rotary, T5 buckets, ALiBi, absolute embeddings.

Expected values come from the papers' formulas re-derived here in float64 / pure Python, from
hand-computed tables (mechanisms.md 1.6, 3.2, 14.1, 14.4) or from invariants.
"""

from __future__ import annotations

import math

import pytest
import torch

from x_attn.positional import (
    AbsolutePositionalEmbedding,
    AlibiPositionalBias,
    RotaryEmbedding,
    ScaledSinusoidalEmbedding,
    T5RelativePositionBias,
    alibi_slopes,
    apply_rotary,
    sinusoidal_table,
    t5_relative_bucket,
)

F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# independent references


def rope_reference(x: torch.Tensor, position: float, r: int, base: float = 10000.0) -> torch.Tensor:
    """Naive half-split RoPE of one vector (d,) in float64: pair (i, i + r/2) by p * theta_i."""
    out = x.clone().to(F64)
    half = r // 2
    for i in range(half):
        theta = base ** (-2 * i / r)
        c, s = math.cos(position * theta), math.sin(position * theta)
        a, b = float(x[i]), float(x[i + half])
        out[i] = a * c - b * s
        out[i + half] = a * s + b * c
    return out


def rotate(x: torch.Tensor, positions, r: int | None = None, **kwargs) -> torch.Tensor:
    """Library RoPE in float64 for x (..., n, d)."""
    rot = RotaryEmbedding(r or x.shape[-1], **kwargs)
    angles = rot(torch.as_tensor(positions), dtype=F64)
    return apply_rotary(x, angles)


def t5_bucket_reference(rel: int, causal: bool, num_buckets: int = 32, max_distance: int = 128):
    """Pure-Python transcription of the bucket function of mechanisms.md 14.4."""
    ret = 0
    if not causal:
        num_buckets //= 2
        ret += num_buckets if rel > 0 else 0
        n = abs(rel)
    else:
        n = max(-rel, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    large = max_exact + int(
        math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    )
    return ret + min(num_buckets - 1, large)


def sinusoid_reference(p: float, dim: int, base: float = 10000.0) -> list[float]:
    """Vaswani et al. 3.5: PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(...)."""
    row = []
    for i in range(dim // 2):
        w = p / base ** (2 * i / dim)
        row += [math.sin(w), math.cos(w)]
    return row


# ----------------------------------------------------------------------------------------------
# rotary


@pytest.mark.parametrize("d,r,pos", [(8, 8, 1), (12, 8, 7), (16, 4, 1234)])
def test_rotary_matches_naive_reference(d, r, pos):
    torch.manual_seed(0)
    x = torch.randn(3, 1, d, dtype=F64)
    out = rotate(x, [pos], r=r)
    for row in range(3):
        expected = rope_reference(x[row, 0], pos, r)
        torch.testing.assert_close(out[row, 0], expected, atol=1e-12, rtol=0)


def test_rotary_relative_position_invariance():
    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 64, dtype=F64).unbind(0)
    scores = []
    for m, n in [(5, 2), (105, 102), (1005, 1002), (3, 0)]:
        scores.append((rotate(q, [m]) * rotate(k, [n])).sum())
    scores = torch.stack(scores)
    torch.testing.assert_close(scores, scores[0].expand(4), atol=1e-10, rtol=0)
    # and a different offset gives a different score (the check can fail)
    other = (rotate(q, [5]) * rotate(k, [1])).sum()
    assert abs(float(other - scores[0])) > 1e-3


def test_rotary_preserves_norm_and_position_zero_is_identity():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 10, 32, dtype=F64)
    out = rotate(x, torch.arange(10) * 97)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1), atol=1e-12, rtol=0)
    assert not torch.allclose(out[..., 1:, :], x[..., 1:, :])
    at_zero = rotate(x[..., :1, :], [0])
    assert torch.equal(at_zero, x[..., :1, :])


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.float16, torch.bfloat16])
def test_partial_rotary_leaves_tail_bit_identical(dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 24).to(dtype)
    rot = RotaryEmbedding(8)
    out = apply_rotary(x, rot(torch.arange(5) + 11))
    assert out.dtype == dtype
    assert torch.equal(out[..., 8:], x[..., 8:])
    assert not torch.equal(out[..., :8], x[..., :8])


def test_rotary_reference_values():
    e0 = torch.zeros(1, 8, dtype=F64)
    e0[0, 0] = 1.0
    out = rotate(e0, [1])[0]
    expected = torch.tensor([0.540302, 0, 0, 0, 0.841471, 0, 0, 0], dtype=F64)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)

    theta = RotaryEmbedding(64)(torch.tensor([1]), dtype=F64)[0]  # angle at p=1 is theta
    assert theta.shape == (32,)
    torch.testing.assert_close(
        theta[:4], torch.tensor([1.0, 0.749894, 0.562341, 0.421697], dtype=F64), atol=1e-6, rtol=0
    )
    assert theta[-1].item() == pytest.approx(1.33352e-4, rel=1e-5)


def test_rotary_theta_uses_rotary_dim_not_head_dim():
    # partial rotary: r = 8 inside d = 32, theta_1 = 10000 ** (-2/8)
    angles = RotaryEmbedding(8)(torch.tensor([1]), dtype=F64)[0]
    assert angles[1].item() == pytest.approx(10000 ** (-0.25), rel=1e-12)


@pytest.mark.parametrize("factor", [1.0, 2.0, 4.0, 2.5])
def test_rotary_interpolation_factor(factor):
    positions = torch.arange(0, 40, dtype=F64) * 3.0
    plain = RotaryEmbedding(16)(positions, dtype=F64)
    scaled = RotaryEmbedding(16, interpolation_factor=factor)(positions * factor, dtype=F64)
    torch.testing.assert_close(scaled, plain, atol=1e-12, rtol=0)
    # equivalently, frequencies divided by the factor
    direct = RotaryEmbedding(16, interpolation_factor=factor)(positions, dtype=F64)
    torch.testing.assert_close(direct, plain / factor, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rotary_half_precision_uses_accurate_angles(dtype):
    torch.manual_seed(0)
    positions = torch.arange(4000, 4008)
    x = torch.randn(2, 8, 32).to(dtype)
    rot = RotaryEmbedding(32).to(dtype)  # model.half() must not degrade the angles
    angles = rot(positions)
    assert angles.dtype == torch.float32
    exact = RotaryEmbedding(32)(positions, dtype=F64)
    torch.testing.assert_close(angles.double(), exact, atol=1e-3, rtol=1e-6)

    out = apply_rotary(x, angles)
    assert out.dtype == dtype
    reference = torch.stack(
        [
            torch.stack(
                [rope_reference(x[b, t].double(), float(positions[t]), 32) for t in range(8)]
            )
            for b in range(2)
        ]
    )
    # error is one rounding of the output, not an O(1) phase error
    tol = 4e-3 if dtype == torch.float16 else 3e-2
    assert (out.double() - reference).abs().max().item() < tol


def test_rotary_argument_errors():
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(7)
    with pytest.raises(ValueError, match="interpolation_factor"):
        RotaryEmbedding(8, interpolation_factor=0.5)
    with pytest.raises(TypeError, match="dim"):
        RotaryEmbedding(8.0)
    angles = RotaryEmbedding(16)(torch.arange(4))
    with pytest.raises(ValueError, match="rotary dim"):
        apply_rotary(torch.randn(4, 8), angles)
    with pytest.raises(ValueError, match="positions"):
        apply_rotary(torch.randn(5, 16), angles)


# ----------------------------------------------------------------------------------------------
# T5 buckets

T5_REL = [-200, -128, -127, -64, -32, -16, -9, -8, -7, -1, 0, 1, 7, 8, 9, 16, 32, 64, 127, 128, 200]
T5_BIDIR = [15, 15, 15, 14, 12, 10, 8, 8, 7, 1, 0, 17, 23, 24, 24, 26, 28, 30, 31, 31, 31]
T5_CAUSAL = [31, 31, 31, 26, 21, 16, 9, 8, 7, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("causal,expected", [(False, T5_BIDIR), (True, T5_CAUSAL)])
def test_t5_bucket_reference_table(causal, expected):
    buckets = t5_relative_bucket(torch.tensor(T5_REL), causal=causal)
    assert buckets.dtype == torch.long
    assert buckets.tolist() == expected


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 64), (10, 40)])
def test_t5_bucket_matches_formula(causal, num_buckets, max_distance):
    rel = torch.arange(-300, 301)
    buckets = t5_relative_bucket(rel, causal, num_buckets, max_distance)
    expected = [t5_bucket_reference(r, causal, num_buckets, max_distance) for r in rel.tolist()]
    assert buckets.tolist() == expected
    assert buckets.min() >= 0 and buckets.max() < num_buckets


@pytest.mark.parametrize("causal", [False, True])
def test_t5_bucket_monotone_and_saturates(causal):
    dist = torch.arange(0, 1000)
    past = t5_relative_bucket(-dist, causal)
    assert bool((past[1:] >= past[:-1]).all())
    last_past = 31 if causal else 15
    assert bool((past[128:] == last_past).all())
    assert past[127] == last_past  # already saturated just below max_distance (see table)
    future = t5_relative_bucket(dist, causal)
    if causal:
        assert bool((future == 0).all())
    else:
        assert bool((future[1:] >= future[:-1]).all())
        assert bool((future[128:] == 31).all())
        assert bool((future[1:] >= 16).all())  # future keys use the upper half


def test_t5_bias_shape_and_lookup():
    torch.manual_seed(0)
    heads = 3
    module = T5RelativePositionBias(heads, causal=False, num_buckets=16, max_distance=32)
    q_pos = torch.arange(5) + 20  # queries at an offset (decoding with a cache)
    k_pos = torch.arange(25)
    bias = module(q_pos, k_pos)
    assert bias.shape == (heads, 5, 25)
    assert bias.dtype == torch.float32
    weight = module.relative_attention_bias.weight
    for h in range(heads):
        for a in range(5):
            for b in range(25):
                bucket = t5_bucket_reference(int(k_pos[b] - q_pos[a]), False, 16, 32)
                assert bias[h, a, b].item() == weight[bucket, h].item()
    bias.sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_t5_argument_errors():
    with pytest.raises(TypeError, match="relative_position"):
        t5_relative_bucket(torch.tensor([1.0]), causal=True)
    with pytest.raises(ValueError, match="max_distance"):
        t5_relative_bucket(torch.tensor([1]), causal=False, num_buckets=32, max_distance=8)
    with pytest.raises(ValueError, match="num_buckets"):
        T5RelativePositionBias(2, causal=False, num_buckets=2)


# ----------------------------------------------------------------------------------------------
# ALiBi

ALIBI_8 = [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625]
ALIBI_12 = [
    *[0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.007812, 0.003906],
    *[0.707107, 0.353553, 0.176777, 0.088388],
]


@pytest.mark.parametrize("heads,expected", [(8, ALIBI_8), (12, ALIBI_12), (1, [2**-8])])
def test_alibi_slope_tables(heads, expected):
    slopes = alibi_slopes(heads)
    assert slopes.dtype == F64 and slopes.shape == (heads,)
    torch.testing.assert_close(slopes, torch.tensor(expected, dtype=F64), atol=1e-6, rtol=0)


def test_alibi_bias_hand_checked_h2_n4():
    bias = AlibiPositionalBias(2)(torch.arange(4), torch.arange(4))
    dist = torch.tensor([[0, 1, 2, 3], [1, 0, 1, 2], [2, 1, 0, 1], [3, 2, 1, 0]], dtype=F64)
    expected = torch.stack([-0.0625 * dist, -0.00390625 * dist]).float()  # slopes 2^-4, 2^-8
    assert bias.dtype == torch.float32 and bias.shape == (2, 4, 4)
    torch.testing.assert_close(bias, expected, atol=0, rtol=0)


def test_alibi_heads_subset_zero_and_decode_offset():
    module = AlibiPositionalBias(2, total_heads=5)
    full = module(torch.arange(6), torch.arange(6))
    assert full.shape == (5, 6, 6)
    assert torch.equal(full[2:], torch.zeros(3, 6, 6))
    torch.testing.assert_close(full[:2], AlibiPositionalBias(2)(torch.arange(6), torch.arange(6)))
    # decoding the last token against the whole cache equals the last row; shifts cancel
    last = module(torch.tensor([5]), torch.arange(6))
    assert torch.equal(last[:, 0], full[:, 5])
    shifted = module(torch.arange(6) + 1000, torch.arange(6) + 1000)
    assert torch.equal(shifted, full)


def test_alibi_argument_errors():
    with pytest.raises(ValueError, match="total_heads"):
        AlibiPositionalBias(8, total_heads=4)
    with pytest.raises(ValueError, match="heads"):
        alibi_slopes(0)


# ----------------------------------------------------------------------------------------------
# absolute


def test_sinusoidal_reference_values():
    table = sinusoidal_table(torch.arange(3), 32, dtype=F64)
    assert table.shape == (3, 32)
    torch.testing.assert_close(
        table[1, :4],
        torch.tensor([0.841471, 0.540302, 0.533168, 0.846009], dtype=F64),
        atol=1e-6,
        rtol=0,
    )
    assert table[0].tolist() == [0.0, 1.0] * 16


def test_sinusoidal_matches_paper_formula():
    positions = torch.tensor([0, 1, 7, 50, 999])
    table = sinusoidal_table(positions, 10, base=500.0, dtype=F64)
    expected = torch.tensor(
        [sinusoid_reference(p, 10, 500.0) for p in positions.tolist()], dtype=F64
    )
    torch.testing.assert_close(table, expected, atol=1e-12, rtol=0)


def test_sinusoidal_dot_product_depends_only_on_offset():
    positions = torch.arange(0, 600, dtype=F64)
    table = sinusoidal_table(positions, 32, dtype=F64)
    offset = 7
    dots = (table[:-offset] * table[offset:]).sum(-1)
    omega = 10000.0 ** (-torch.arange(0, 32, 2, dtype=F64) / 32)
    expected = torch.cos(offset * omega).sum()
    torch.testing.assert_close(dots, expected.expand_as(dots), atol=1e-10, rtol=0)


def test_sinusoidal_odd_dim_rejected():
    with pytest.raises(ValueError, match="even"):
        sinusoidal_table(torch.arange(3), 7)


def test_learned_absolute_lookup_init_and_error():
    torch.manual_seed(0)
    module = AbsolutePositionalEmbedding(64, max_seq_len=64)
    std = module.emb.weight.std().item()
    assert 0.018 < std < 0.022
    positions = torch.tensor([0, 5, 63])
    assert torch.equal(module(positions), module.emb.weight[[0, 5, 63]])
    with pytest.raises(ValueError, match="max_seq_len=64") as info:
        module(torch.arange(65))
    assert "use_abs_pos_emb=False" in str(info.value)


def test_scaled_sinusoidal():
    module = ScaledSinusoidalEmbedding(16)
    assert module.scale.item() == pytest.approx(16**-0.5)
    positions = torch.arange(4)
    out = module(positions)
    expected = torch.tensor([sinusoid_reference(p, 16) for p in range(4)]) * 16**-0.5
    torch.testing.assert_close(out, expected.float(), atol=1e-6, rtol=0)
    out.sum().backward()
    assert module.scale.grad is not None
