"""Tests for x_attn.wrappers.sampling: logit filters and sample_next.

References are written here: hand-computed kept sets, a naive Python top-k, float64 softmax,
the entmax values of reference/mechanisms.md section 15.4 and a naive float64 entmax bisection.
"""

from __future__ import annotations

import math

import pytest
import torch

from x_attn.wrappers.sampling import (
    FILTERS,
    min_p,
    resolve_filter,
    sample_next,
    top_a,
    top_k,
    top_p,
)

DTYPES = [torch.float32, torch.float64]
N_DRAWS = 20000
FREQ_TOL = 0.015  # ~4 standard deviations of a frequency estimated from 20000 draws

# two rows of probabilities; row 1 is a permutation so un-sorting is exercised
PROBS_A = [0.5, 0.3, 0.15, 0.05]
PROBS_B = [0.3, 0.28, 0.22, 0.2]


def _logits(rows: list[list[float]], dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).log().to(dtype)


def _kept(filtered: torch.Tensor) -> list[set[int]]:
    return [set(torch.nonzero(torch.isfinite(row)).flatten().tolist()) for row in filtered]


def _frequencies(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(ids, minlength=vocab).double() / ids.numel()


def _entmax_reference(z: list[float], alpha: float) -> list[float]:
    """Naive float64 alpha-entmax: p_j = [(alpha-1) z_j - tau]_+^(1/(alpha-1)), sum p = 1."""
    scaled = [(alpha - 1.0) * v for v in z if v != -math.inf]
    power = 1.0 / (alpha - 1.0)

    def total(tau: float) -> float:
        return sum(max(s - tau, 0.0) ** power for s in scaled)

    lo, hi = max(scaled) - 1.0, max(scaled)  # total(lo) >= 1 >= total(hi) = 0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if total(mid) >= 1.0 else (lo, mid)
    tau = 0.5 * (lo + hi)
    return [0.0 if v == -math.inf else max((alpha - 1.0) * v - tau, 0.0) ** power for v in z]


# ------------------------------------------------------------------------------------------------
# top_k


@pytest.mark.parametrize("dtype", DTYPES)
def test_top_k_keeps_exactly_the_k_largest(dtype):
    torch.manual_seed(0)
    logits = torch.randn(3, 50, dtype=dtype)
    out = top_k(logits, k=7)
    assert out.dtype == dtype and out.shape == logits.shape
    for row_in, row_out in zip(logits.tolist(), out.tolist()):
        largest = sorted(row_in, reverse=True)[:7]
        finite = [v for v in row_out if v != -math.inf]
        assert len(finite) == 7
        assert sorted(finite, reverse=True) == largest
        for v_in, v_out in zip(row_in, row_out):  # kept values unchanged, at their place
            assert v_out == -math.inf or v_out == v_in


def test_top_k_default_k_and_ties_and_clamp():
    logits = torch.randn(2, 10)
    # ceil(0.25 * 10) = 3 ; default frac 0.1 -> ceil(1.0) = 1
    assert (torch.isfinite(top_k(logits, frac_num_tokens=0.25)).sum(-1) == 3).all()
    assert (torch.isfinite(top_k(logits)).sum(-1) == 1).all()
    ties = torch.zeros(2, 10)
    assert (torch.isfinite(top_k(ties, k=3)).sum(-1) == 3).all()
    assert torch.equal(top_k(logits, k=50), logits)  # k > vocab keeps everything


def test_top_k_rejects_bad_k():
    with pytest.raises(ValueError, match="'k'"):
        top_k(torch.randn(2, 5), k=0)
    with pytest.raises(TypeError, match="'k'"):
        top_k(torch.randn(2, 5), k=2.5)
    with pytest.raises(ValueError, match="frac_num_tokens"):
        top_k(torch.randn(2, 5), frac_num_tokens=0.0)


# ------------------------------------------------------------------------------------------------
# top_p


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("thres", "kept_a", "kept_b"),
    [
        (0.7, {0, 1}, {0, 1, 2}),  # A: .5 +.3 = .8 >= .7 ; B: .3 + .28 + .22 = .8 >= .7
        (0.85, {0, 1, 2}, {0, 1, 2, 3}),  # A: .95 >= .85 ; B: .8 < .85 -> all four
        (0.4, {0}, {0, 1}),  # A: .5 crosses ; B: .58 crosses
        (0.1, {0}, {0}),
        (0.0, {0}, {0}),  # top token always kept
        (1.0, {0, 1, 2, 3}, {0, 1, 2, 3}),
    ],
)
def test_top_p_hand_checked(dtype, thres, kept_a, kept_b):
    perm = [2, 0, 3, 1]  # row B is stored permuted: position perm[i] holds PROBS_B[i]
    row_b = [0.0] * 4
    for i, p in enumerate(PROBS_B):
        row_b[perm[i]] = p
    out = top_p(_logits([PROBS_A, row_b], dtype), thres=thres)
    assert out.dtype == dtype
    kept = _kept(out)
    assert kept[0] == kept_a
    assert kept[1] == {perm[i] for i in kept_b}


def test_top_p_always_keeps_argmax_and_values():
    torch.manual_seed(1)
    logits = torch.randn(8, 30) * 5
    for thres in (0.0, 0.05, 0.5, 0.9):
        out = top_p(logits, thres=thres)
        rows = torch.arange(8)
        assert torch.equal(out[rows, logits.argmax(-1)], logits[rows, logits.argmax(-1)])
        kept = torch.isfinite(out)
        assert torch.equal(out[kept], logits[kept])


# ------------------------------------------------------------------------------------------------
# min_p and top_a


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("value", "kept_a", "kept_b"),
    [
        (0.5, {0, 1}, {0, 1, 2, 3}),  # A: p >= .25 ; B: p >= .15 (per-row max, not global)
        (0.65, {0}, {0, 1, 2, 3}),  # A: p >= .325 ; B: p >= .195
        (0.8, {0}, {0, 1}),  # A: p >= .4 ; B: p >= .24
        (0.2, {0, 1, 2}, {0, 1, 2, 3}),  # A: p >= .1
        (0.0, {0, 1, 2, 3}, {0, 1, 2, 3}),
    ],
)
def test_min_p_hand_checked(dtype, value, kept_a, kept_b):
    out = min_p(_logits([PROBS_A, PROBS_B], dtype), min_p=value)
    assert out.dtype == dtype
    assert _kept(out) == [kept_a, kept_b]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("power", "ratio", "kept_a", "kept_b"),
    [
        (2.0, 0.5, {0, 1, 2}, {0, 1, 2, 3}),  # A: p >= .5 * .25 = .125 ; B: p >= .045
        (2.0, 1.0, {0, 1}, {0, 1, 2, 3}),  # A: p >= .25 ; B: p >= .09
        (1.0, 0.9, {0}, {0, 1}),  # A: p >= .45 ; B: p >= .27
        (2.0, 0.02, {0, 1, 2, 3}, {0, 1, 2, 3}),  # defaults: A: p >= .005
        (0.5, 1.0, {0}, {0}),  # limit sqrt(pmax) > pmax: only the top token survives
    ],
)
def test_top_a_hand_checked(dtype, power, ratio, kept_a, kept_b):
    out = top_a(_logits([PROBS_A, PROBS_B], dtype), min_p_pow=power, min_p_ratio=ratio)
    assert out.dtype == dtype
    assert _kept(out) == [kept_a, kept_b]


def test_filters_reject_bad_parameters():
    logits = torch.randn(2, 5)
    with pytest.raises(ValueError, match="thres"):
        top_p(logits, thres=1.5)
    with pytest.raises(ValueError, match="'min_p'"):
        min_p(logits, min_p=-0.1)
    with pytest.raises(ValueError, match="min_p_ratio"):
        top_a(logits, min_p_ratio=-1.0)
    with pytest.raises(TypeError, match="floating"):
        top_k(torch.ones(2, 5, dtype=torch.long), k=2)


@pytest.mark.parametrize("name", sorted(FILTERS))
@pytest.mark.parametrize("dtype", DTYPES + [torch.bfloat16])
def test_filters_do_not_modify_input_and_keep_dtype(name, dtype):
    torch.manual_seed(2)
    logits = torch.randn(4, 20).to(dtype)
    logits[0, 3] = -math.inf  # pre-masked entries stay masked
    before = logits.clone()
    out = FILTERS[name](logits)
    assert torch.equal(logits, before)
    assert out.dtype == dtype and out.shape == logits.shape
    assert out[0, 3] == -math.inf
    assert (torch.isfinite(out).sum(-1) >= 1).all()


# ------------------------------------------------------------------------------------------------
# resolve_filter


def test_resolve_filter():
    assert resolve_filter(None) is None
    assert resolve_filter("top_p") is top_p
    custom = lambda logits: logits  # noqa: E731
    assert resolve_filter(custom) is custom
    with pytest.raises(ValueError) as info:
        resolve_filter("top_q")
    for name in ("top_k", "top_p", "min_p", "top_a"):
        assert name in str(info.value)
    assert "top_q" in str(info.value)
    with pytest.raises(TypeError, match="filter_logits_fn"):
        resolve_filter(3)


# ------------------------------------------------------------------------------------------------
# sample_next: argument handling


@pytest.mark.parametrize("dtype", DTYPES)
def test_temperature_zero_is_argmax(dtype):
    torch.manual_seed(3)
    logits = torch.randn(16, 40, dtype=dtype)
    expected = [max(range(40), key=row.__getitem__) for row in logits.tolist()]
    # a filter that would drop the argmax is not applied in greedy mode
    drop_all_but_first = lambda x: torch.cat([x[:, :1], torch.full_like(x[:, 1:], -math.inf)], -1)  # noqa: E731
    ids = sample_next(logits, temperature=0.0, filter_fn=drop_all_but_first)
    assert ids.dtype == torch.long and ids.shape == (16,)
    assert ids.tolist() == expected


def test_sample_next_rejects_bad_arguments():
    logits = torch.randn(2, 5)
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, temperature=-0.5)
    with pytest.raises(ValueError, match="entmax_alpha"):
        sample_next(logits, entmax_alpha=1.0)
    with pytest.raises(ValueError, match="filter_kwargs"):
        sample_next(logits, filter_kwargs={"k": 2})
    with pytest.raises(ValueError, match="top_k"):
        sample_next(logits, filter_fn="topk")
    with pytest.raises(ValueError, match="batch, vocab"):
        sample_next(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="NaN"):
        sample_next(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="all -inf"):
        sample_next(torch.tensor([[0.0, 1.0], [-math.inf, -math.inf]]))
    with pytest.raises(ValueError, match="filter_fn"):
        sample_next(logits, filter_fn=lambda x: torch.full_like(x, -math.inf))


def test_sample_next_does_not_modify_input_and_never_nan():
    logits = torch.tensor([[1000.0, 999.0, 0.0, -math.inf], [-3e38, -3e38, 5.0, -math.inf]])
    before = logits.clone()
    gen = torch.Generator().manual_seed(0)
    ids = sample_next(logits, temperature=1e-30, filter_fn="top_p", generator=gen)
    assert torch.equal(logits, before)
    assert ids.tolist() == [0, 2]  # tiny temperature behaves like argmax, no overflow
    for alpha in (1.2, 1.5, 4.0):
        ids = sample_next(logits, entmax_alpha=alpha, temperature=1e-30, generator=gen)
        assert ids.tolist() == [0, 2]


# ------------------------------------------------------------------------------------------------
# sample_next: statistics


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_softmax_sampling_frequencies(dtype, temperature):
    z = [2.0, 1.0, 0.5, 0.0, -1.0, -2.0]
    reference = torch.tensor(z, dtype=torch.float64).div(temperature).softmax(-1)
    untempered = torch.tensor(z, dtype=torch.float64).softmax(-1)
    if temperature != 1.0:  # the tolerance can tell the tempered law from the plain one
        assert (reference - untempered).abs().max() > 4 * FREQ_TOL
    logits = torch.tensor(z, dtype=dtype).expand(N_DRAWS, -1)
    gen = torch.Generator().manual_seed(1234)
    ids = sample_next(logits, temperature=temperature, generator=gen)
    assert ids.dtype == torch.long and ids.shape == (N_DRAWS,)
    assert (_frequencies(ids, 6) - reference).abs().max() < FREQ_TOL


def test_filtered_sampling_frequencies_per_row():
    # rows alternate between two logit vectors; top_k(k=3) then softmax over the kept three
    z_even = [2.0, 1.0, 0.5, 0.0, -1.0]
    z_odd = [-1.0, 0.0, 1.5, 1.0, 0.8]
    logits = torch.tensor([z_even, z_odd]).repeat(N_DRAWS // 2, 1)
    gen = torch.Generator().manual_seed(7)
    ids = sample_next(
        logits, temperature=0.8, filter_fn="top_k", filter_kwargs={"k": 3}, generator=gen
    )
    for ids_row, z in ((ids[0::2], z_even), (ids[1::2], z_odd)):
        top3 = sorted(range(5), key=lambda i: -z[i])[:3]
        weights = [math.exp(z[i] / 0.8) if i in top3 else 0.0 for i in range(5)]
        reference = torch.tensor(weights, dtype=torch.float64) / sum(weights)
        freq = _frequencies(ids_row, 5)
        assert (freq[reference == 0] == 0).all()
        assert (freq - reference).abs().max() < FREQ_TOL * 1.5  # 10000 draws per row kind


def test_temperature_is_applied_before_the_filter():
    # probs [.5, .3, .15, .05] at temperature 2 become proportional to sqrt(p):
    # min_p=0.5 then keeps sqrt(.15) >= 0.5 * sqrt(.5) (3 tokens), while at temperature 1 it
    # would keep only 2; the draws must follow the tempered, filtered, renormalised law.
    logits = _logits([PROBS_A], torch.float64).expand(N_DRAWS, -1)
    weights = [math.sqrt(p) for p in PROBS_A[:3]] + [0.0]
    reference = torch.tensor(weights, dtype=torch.float64) / sum(weights)
    gen = torch.Generator().manual_seed(11)
    ids = sample_next(
        logits, temperature=2.0, filter_fn="min_p", filter_kwargs={"min_p": 0.5}, generator=gen
    )
    freq = _frequencies(ids, 4)
    assert freq[3] == 0
    assert (freq - reference).abs().max() < FREQ_TOL


def test_entmax_reference_matches_documented_values():
    # reference/mechanisms.md 15.4: sparsemax and entmax-1.5 of [1, 0.5, 0, -1]
    assert _entmax_reference([1, 0.5, 0, -1], 2.0) == pytest.approx([0.75, 0.25, 0, 0], abs=1e-9)
    expected = [0.624198, 0.291667, 0.084136, 0.0]
    assert _entmax_reference([1, 0.5, 0, -1], 1.5) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("alpha", "temperature", "dtype"),
    [
        (1.5, 1.0, torch.float32),
        (2.0, 1.0, torch.float64),
        (1.2, 0.5, torch.float32),
        (1.5, 2.0, torch.float64),
    ],
)
def test_entmax_sampling_frequencies(alpha, temperature, dtype):
    z = [1.0, 0.5, 0.0, -1.0, -3.0]
    reference = torch.tensor(_entmax_reference([v / temperature for v in z], alpha))
    assert (reference == 0).any()  # the case is sparse, so "never sampled" is tested
    logits = torch.tensor(z, dtype=dtype).expand(N_DRAWS, -1)
    gen = torch.Generator().manual_seed(99)
    ids = sample_next(logits, temperature=temperature, entmax_alpha=alpha, generator=gen)
    freq = _frequencies(ids, 5)
    assert (freq[reference == 0] == 0).all()
    assert (freq - reference).abs().max() < FREQ_TOL


def test_entmax_sampling_with_filter():
    # top_k(k=2) leaves [1, 0.5, -inf, -inf, -inf]; entmax-1.5 of that puts mass on tokens 0, 1
    z = [1.0, 0.5, 0.45, 0.4, -1.0]
    reference = torch.tensor(_entmax_reference([1.0, 0.5] + [-math.inf] * 3, 1.5))
    assert reference[1] > 0.3  # without the filter tokens 2, 3 would also get mass
    logits = torch.tensor(z).expand(N_DRAWS, -1)
    gen = torch.Generator().manual_seed(5)
    ids = sample_next(
        logits, entmax_alpha=1.5, filter_fn=top_k, filter_kwargs={"k": 2}, generator=gen
    )
    freq = _frequencies(ids, 5)
    assert (freq[2:] == 0).all()
    assert (freq - reference).abs().max() < FREQ_TOL


def test_generator_makes_draws_reproducible():
    logits = torch.randn(64, 10)
    a = sample_next(logits, generator=torch.Generator().manual_seed(3))
    b = sample_next(logits, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
