"""The rotary family: layouts, partial rotary, PI, NTK base, YaRN, Llama 3, xPos, precision.

References are written here from the papers' formulas (float64, plain Python math where it is
short) or are invariants: relative-position invariance, layout permutation, exact regions of the
frequency rescalings, the YaRN temperature table of mechanisms.md 2.3.

Shape legend: b batch, h heads, n positions, d head dim, r rotary dim, f = r/2 pairs.
"""

from __future__ import annotations

import math

import pytest
import torch
from flag_models import build, tokens
from torch import Tensor

from x_attn import Decoder, Encoder, TransformerWrapper
from x_attn.positional import (
    Llama3Scaling,
    RotaryEmbedding,
    YarnScaling,
    apply_rotary,
)
from x_attn.positional.xpos import xpos_max_position
from x_attn.registry import flag_case

F64 = torch.float64


def rope_pairs_reference(x: Tensor, position: float, thetas: list[float], pairs) -> Tensor:
    """Naive RoPE of one vector: pair (a, b) = pairs[i] rotated by position * thetas[i]."""
    out = x.clone().to(F64)
    for theta, (a, b) in zip(thetas, pairs):
        c, s = math.cos(position * theta), math.sin(position * theta)
        out[a] = float(x[a]) * c - float(x[b]) * s
        out[b] = float(x[a]) * s + float(x[b]) * c
    return out


def plain_thetas(r: int, base: float = 10000.0) -> list[float]:
    return [base ** (-2 * i / r) for i in range(r // 2)]


# ----------------------------------------------------------------------------------------------
# layouts and partial rotary


@pytest.mark.parametrize(("d", "r"), [(8, 8), (12, 8)])
def test_interleaved_layout_matches_naive_pairs(d: int, r: int) -> None:
    x = torch.randn(d, dtype=F64, generator=torch.Generator().manual_seed(0))
    rot = RotaryEmbedding(r, interleaved=True)
    table = rot.table(torch.tensor([7]), dtype=F64)
    got = table.rotate(x.view(1, d))[0]
    pairs = [(2 * i, 2 * i + 1) for i in range(r // 2)]
    torch.testing.assert_close(got, rope_pairs_reference(x, 7, plain_thetas(r), pairs))
    assert torch.equal(got[r:], x[r:])  # partial rotary: the tail is untouched
    half = apply_rotary(x.view(1, d), rot(torch.tensor([7]), dtype=F64))[0]
    half_pairs = [(i, i + r // 2) for i in range(r // 2)]
    torch.testing.assert_close(half, rope_pairs_reference(x, 7, plain_thetas(r), half_pairs))


def test_reference_value_of_mechanisms_1_6() -> None:
    e0 = torch.zeros(1, 8, dtype=F64)
    e0[0, 0] = 1.0
    table = RotaryEmbedding(8, interleaved=True).table(torch.tensor([1]), dtype=F64)
    expected = [0.540302, 0.841471, 0, 0, 0, 0, 0, 0]
    expected = torch.tensor(expected, dtype=F64)
    torch.testing.assert_close(table.rotate(e0)[0], expected, atol=1e-6, rtol=0)


def _permute_qk_rows(source: TransformerWrapper, target: TransformerWrapper, r: int, dh: int):
    """Copy weights, with W_q / W_k rows of each head in "evens then odds" order: a half-split
    checkpoint read by an interleaved model (the permutation of mechanisms.md 1.2)."""
    perm = torch.cat((torch.arange(0, r, 2), torch.arange(1, r, 2), torch.arange(r, dh)))
    state = dict(source.state_dict())
    for name, w in state.items():
        if name.endswith(("to_q.weight", "to_k.weight")):
            heads = w.shape[0] // dh
            rows = torch.cat([h * dh + torch.argsort(perm) for h in range(heads)])
            state[name] = w[rows]
    target.load_state_dict(state)


@pytest.mark.parametrize("r", [8, 4])
def test_interleaved_model_loads_a_half_split_checkpoint_by_row_permutation(r: int) -> None:
    """The two layouts are the same model up to a fixed permutation of q/k rows per head."""
    kwargs = dict(rotary_pos_emb=True, rotary_emb_dim=r)
    half = build(flag_case("default"), **kwargs)
    inter = build(flag_case("default"), **kwargs, rotary_interleaved=True)
    x = tokens(2, 9)
    with torch.no_grad():
        assert (half(x) - inter(x)).abs().max() > 1e-6  # same weights, different layouts
        _permute_qk_rows(half, inter, r, 8)
        torch.testing.assert_close(inter(x), half(x), atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------------------------
# PI and the NTK-aware base


def test_ntk_base_keeps_the_first_frequency_and_divides_the_last_by_s() -> None:
    r, s = 64, 4.0
    plain = RotaryEmbedding(r).frequencies()
    ntk = RotaryEmbedding(r, base_rescale_factor=s).frequencies()
    assert ntk[0] == plain[0] == 1.0
    torch.testing.assert_close(ntk[-1], plain[-1] / s, atol=0, rtol=1e-13)
    expected_base = 10000.0 * s ** (r / (r - 2))  # x-transformers' rotary_base_rescale_factor
    torch.testing.assert_close(ntk, RotaryEmbedding(r, base=expected_base).frequencies())


def test_interpolation_and_ntk_compose_as_in_x_transformers() -> None:
    both = RotaryEmbedding(16, interpolation_factor=2.0, base_rescale_factor=3.0)
    pos = torch.arange(20)
    ntk = RotaryEmbedding(16, base_rescale_factor=3.0)
    torch.testing.assert_close(both(pos, dtype=F64), ntk(pos.double() / 2, dtype=F64))


# ----------------------------------------------------------------------------------------------
# YaRN


@pytest.mark.parametrize(
    ("s", "expected"),
    [
        (1, 1.0),
        (2, 1.069315),
        (4, 1.138629),
        (8, 1.207944),
        (16, 1.277259),
        (32, 1.346574),
        (40, 1.368888),
    ],
)
def test_yarn_temperature_table(s: float, expected: float) -> None:
    assert YarnScaling(s, 4096).magnitude == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("r", "base", "s", "length"), [(128, 10000.0, 16.0, 4096), (64, 1e6, 4.0, 2048)]
)
def test_yarn_frequencies_follow_the_paper_outside_the_ramp(r, base, s, length) -> None:
    """Paper: rho = L / wavelength; rho >= beta_fast keeps theta, rho <= beta_slow gives
    theta / s; in between the reference code's ramp is linear in the pair index."""
    yarn = RotaryEmbedding(r, base=base, scaling=YarnScaling(s, length)).frequencies()
    kept = interpolated = ramped = 0
    lo = math.floor(r * math.log(length / (32 * 2 * math.pi)) / (2 * math.log(base)))
    hi = math.ceil(r * math.log(length / (1 * 2 * math.pi)) / (2 * math.log(base)))
    for i, theta in enumerate(plain_thetas(r, base)):
        rho = length / (2 * math.pi / theta)
        got = float(yarn[i])
        if rho >= 32:
            assert got == pytest.approx(theta, rel=1e-14)
            kept += 1
        elif rho <= 1:
            assert got == pytest.approx(theta / s, rel=1e-14)
            interpolated += 1
        else:
            g = min(max((i - lo) / (hi - lo), 0.0), 1.0)
            assert got == pytest.approx(theta * (1 - g) + theta / s * g, rel=1e-13)
            ramped += 1
    assert kept and interpolated and ramped  # every region was exercised


def test_yarn_scales_logits_by_the_squared_temperature_and_stays_relative() -> None:
    r, s = 16, 8.0
    rot = RotaryEmbedding(r, scaling=YarnScaling(s, 64))
    plain_freqs = RotaryEmbedding(r, scaling=YarnScaling(s, 64, attn_factor=1.0))
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, r, dtype=F64, generator=g), torch.randn(1, r, dtype=F64, generator=g)

    def score(emb: RotaryEmbedding, m: int, n: int) -> float:
        qt = emb.table(torch.tensor([m]), dtype=F64).rotate(q)
        kt = emb.table(torch.tensor([n]), dtype=F64).rotate(k, key=True)
        return float((qt * kt).sum())

    m2 = (0.1 * math.log(s) + 1) ** 2
    assert score(rot, 9, 4) == pytest.approx(m2 * score(plain_freqs, 9, 4), rel=1e-12)
    assert score(rot, 1009, 1004) == pytest.approx(score(rot, 9, 4), rel=1e-9)


# ----------------------------------------------------------------------------------------------
# Llama 3


def test_llama3_frequencies_match_the_formula() -> None:
    r, base, s, length = 128, 500000.0, 8.0, 8192
    got = RotaryEmbedding(r, base=base, scaling=Llama3Scaling(s, length)).frequencies()
    low_wavelen, high_wavelen = length / 1.0, length / 4.0
    regions = set()
    for i, theta in enumerate(plain_thetas(r, base)):
        wavelen = 2 * math.pi / theta
        if wavelen < high_wavelen:
            expected, region = theta, "kept"
        elif wavelen > low_wavelen:
            expected, region = theta / s, "divided"
        else:
            smooth = (length / wavelen - 1.0) / (4.0 - 1.0)
            expected, region = (1 - smooth) * theta / s + smooth * theta, "smooth"
        regions.add(region)
        assert float(got[i]) == pytest.approx(expected, rel=1e-13)
    assert regions == {"kept", "divided", "smooth"}


# ----------------------------------------------------------------------------------------------
# xPos


def test_xpos_scores_follow_the_paper_and_depend_on_distance_only() -> None:
    """score(m, n) = sum_i zeta_i ** ((m - n) / scale_base) * (pair i of rotated q . k)."""
    r, sb = 8, 16.0
    rot = RotaryEmbedding(r, xpos_scale_base=sb)
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(1, r, dtype=F64, generator=g), torch.randn(1, r, dtype=F64, generator=g)

    def score(m: int, n: int) -> float:
        qt = rot.table(torch.tensor([m]), dtype=F64).rotate(q)
        kt = rot.table(torch.tensor([n]), dtype=F64).rotate(k, key=True)
        return float((qt * kt).sum())

    thetas, half = plain_thetas(r), r // 2
    for m, n in [(9, 4), (30, 2), (5, 5)]:
        expected = 0.0
        for i in range(half):
            zeta = (2 * i / r + 0.4) / 1.4
            a = (m - n) * thetas[i]  # <R_m q, R_n k> for pair (i, i + r/2)
            q1, q2 = float(q[0, i]), float(q[0, i + half])
            k1, k2 = float(k[0, i]), float(k[0, i + half])
            pair = (q1 * k1 + q2 * k2) * math.cos(a) + (q1 * k2 - q2 * k1) * math.sin(a)
            expected += zeta ** ((m - n) / sb) * pair
        assert score(m, n) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert score(109, 104) == pytest.approx(score(9, 4), rel=1e-9)


def test_xpos_is_refused_on_an_encoder_naming_the_flag() -> None:
    with pytest.raises(ValueError, match="rotary_xpos=True .*causal=True"):
        Encoder(dim=16, depth=1, heads=2, rotary_xpos=True)


def test_xpos_refuses_positions_its_dtype_cannot_hold() -> None:
    limit = xpos_max_position(8, 512.0, torch.float16)
    assert 2000 < limit < 4000 and xpos_max_position(8, 512.0, torch.float32) > 30000
    layers = Decoder(dim=16, depth=1, heads=2, attn_dim_head=8, rotary_xpos=True).half()
    x = torch.randn(1, 2, 16, dtype=torch.float16)
    with pytest.raises(ValueError, match="rotary_xpos: position .* beyond"):
        layers(x, pos=torch.tensor([0, limit + 1]))
    out = layers(x, pos=torch.tensor([0, limit - 1]))
    assert torch.isfinite(out).all()


# ----------------------------------------------------------------------------------------------
# precision: angles in float64, tables cast last


def test_float32_tables_at_8k_positions_match_float64() -> None:
    rot = RotaryEmbedding(16)
    pos = torch.arange(8192)
    table32, table64 = rot.table(pos, torch.float32), rot.table(pos, F64)
    assert (table32.cos.double() - table64.cos).abs().max() < 1e-7
    assert (table32.sin.double() - table64.sin).abs().max() < 1e-7
    # what float32 angles would give: a phase error near 5e-4 rad at position 8191
    angles32 = rot(pos, dtype=torch.float32)
    assert (angles32.cos().double() - table64.cos).abs().max() > 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_rotation_at_8k_positions(dtype: torch.dtype) -> None:
    rot = RotaryEmbedding(16)
    pos = torch.arange(8192)
    q = torch.randn(1, 2, 8192, 16, generator=torch.Generator().manual_seed(3))
    expected = rot.table(pos, F64).rotate(q.to(dtype).double())
    got = rot.table(pos, torch.float32).rotate(q.to(dtype))
    assert got.dtype == dtype
    eps = torch.finfo(dtype).eps
    assert ((got.double() - expected).abs() / expected.abs().clamp(min=1)).max() <= eps


def test_half_precision_model_at_8k_positions_matches_float64() -> None:
    """A bfloat16 decoder at positions near 8192: the rotary part adds no error beyond bf16."""
    torch.manual_seed(0)
    layers = Decoder(dim=32, depth=1, heads=2, attn_dim_head=16, rotary_pos_emb=True)
    x = torch.randn(1, 6, 32)
    pos = torch.arange(8186, 8192)
    with torch.no_grad():
        expected = layers.double()(x.double(), pos=pos)
        got = layers.bfloat16()(x.bfloat16(), pos=pos)
    assert torch.isfinite(got).all()
    assert (got.double() - expected).abs().max() < 0.05


# ----------------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize(
    ("flags", "pattern"),
    [
        (dict(rotary_interleaved=True), "rotary_interleaved=True configures rotary_pos_emb"),
        (dict(rotary_base_rescale_factor=2.0), "rotary_base_rescale_factor=2.0 configures"),
        (dict(rotary_pos_emb=True, rotary_yarn_beta_fast=16.0), "configures rotary_yarn_factor"),
        (dict(rotary_pos_emb=True, rotary_yarn_factor=4.0), "original_max_len' is required"),
        (
            dict(
                rotary_pos_emb=True,
                rotary_yarn_factor=4.0,
                rotary_yarn_original_max_len=64,
                rotary_interpolation_factor=2.0,
            ),
            "rotary_interpolation_factor and rotary_yarn_factor both rescale",
        ),
        (
            dict(
                rotary_pos_emb=True,
                rotary_yarn_factor=4.0,
                rotary_yarn_original_max_len=64,
                rotary_llama3_factor=8.0,
                rotary_llama3_original_max_len=64,
            ),
            "rotary_yarn_factor and rotary_llama3_factor both rescale",
        ),
        (
            dict(
                rotary_pos_emb=True,
                rotary_yarn_factor=4.0,
                rotary_yarn_original_max_len=64,
                rotary_yarn_beta_fast=1.0,
            ),
            "beta_fast' .* must exceed",
        ),
        (dict(rotary_pos_emb=True, rotary_emb_dim=2, rotary_base_rescale_factor=2.0), "r >= 4"),
        (dict(rotary_xpos_scale_base=64), "configures rotary_xpos"),
    ],
)
def test_rotary_refusals_name_the_flags(flags: dict, pattern: str) -> None:
    with pytest.raises((ValueError, TypeError), match=pattern):
        Decoder(dim=16, depth=1, heads=2, attn_dim_head=8, **flags)


def test_rotary_flag_types_are_checked() -> None:
    with pytest.raises(TypeError, match="rotary_interleaved"):
        Decoder(dim=16, depth=1, rotary_pos_emb=True, rotary_interleaved="yes")
    with pytest.raises(TypeError, match="rotary_yarn_factor"):
        Decoder(dim=16, depth=1, rotary_pos_emb=True, rotary_yarn_factor="4")
