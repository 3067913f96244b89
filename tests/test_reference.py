"""Checks of the float64 reference attention itself: hand-computed cases and SDPA in float64.

Shape legend: b batch, h heads, i query length, j key length, d head dim.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from reference import reference_attention, reference_probs

ATOL = 1e-12


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def test_one_query_two_keys_hand_computed() -> None:
    # scale=1: scores are [1, 0] -> weights [e / (e + 1), 1 / (e + 1)]
    q = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    k = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    v = torch.tensor([[10.0, 0.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    w0, w1 = math.e / (math.e + 1), 1 / (math.e + 1)
    probs = reference_probs(q, k, v, scale=1.0)
    out = reference_attention(q, k, v, scale=1.0)
    assert probs.dtype == torch.float64 and out.dtype == torch.float64
    torch.testing.assert_close(probs.flatten(), torch.tensor([w0, w1], dtype=torch.float64))
    torch.testing.assert_close(out.flatten(), torch.tensor([10 * w0, w1], dtype=torch.float64))


def test_default_scale_is_inverse_sqrt_head_dim() -> None:
    # d = 4: raw score 2 -> scaled 2 / sqrt(4) = 1 -> same weights as the case above
    q = torch.tensor([2.0, 0.0, 0.0, 0.0]).view(1, 1, 1, 4)
    k = torch.zeros(1, 1, 2, 4)
    k[0, 0, 0, 0] = 1.0
    probs = reference_probs(q, k, k).flatten()
    expected = torch.tensor([math.e / (math.e + 1), 1 / (math.e + 1)], dtype=torch.float64)
    torch.testing.assert_close(probs, expected)


def test_causal_is_bottom_right_aligned_short_query() -> None:
    # i = 2 queries are the last two of 4 positions: row 0 sees keys 0..2, row 1 sees 0..3.
    # Zero queries give equal scores, so the allowed keys share the weight uniformly.
    q = torch.zeros(1, 1, 2, 4)
    k = _rand(1, 1, 4, 4)
    probs = reference_probs(q, k, k, causal=True)[0, 0]
    expected = torch.tensor(
        [[1 / 3, 1 / 3, 1 / 3, 0.0], [1 / 4, 1 / 4, 1 / 4, 1 / 4]], dtype=torch.float64
    )
    torch.testing.assert_close(probs, expected, atol=ATOL, rtol=0)


def test_causal_long_query_first_rows_are_zero() -> None:
    # i = 4 > j = 2: query t sees key s iff s <= t - 2, so rows 0 and 1 see nothing.
    q = torch.zeros(1, 1, 4, 4)
    k = _rand(1, 1, 2, 4)
    v = _rand(1, 1, 2, 3, seed=1)
    probs = reference_probs(q, k, v, causal=True)[0, 0]
    expected = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(probs, expected, atol=ATOL, rtol=0)
    out = reference_attention(q, k, v, causal=True)[0, 0]
    assert not torch.isnan(out).any()
    assert (out[:2] == 0).all()
    torch.testing.assert_close(out[2], v[0, 0, 0], atol=ATOL, rtol=0)


def test_fully_masked_row_gives_zeros_and_other_rows_unchanged() -> None:
    q, k, v = _rand(1, 2, 3, 4), _rand(1, 2, 5, 4, seed=1), _rand(1, 2, 5, 6, seed=2)
    mask = torch.ones(1, 1, 3, 5, dtype=torch.bool)
    mask[..., 1, :] = False
    out = reference_attention(q, k, v, mask=mask)
    full = reference_attention(q, k, v)
    assert not torch.isnan(out).any()
    assert (out[:, :, 1] == 0).all()
    torch.testing.assert_close(out[:, :, 0], full[:, :, 0], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[:, :, 2], full[:, :, 2], atol=ATOL, rtol=0)


def test_key_padding_mask_equals_dropping_the_keys() -> None:
    q, k, v = _rand(2, 2, 3, 4), _rand(2, 2, 5, 4, seed=1), _rand(2, 2, 5, 4, seed=2)
    keep = torch.tensor([True, False, True, True, False])
    out = reference_attention(q, k, v, mask=keep.view(1, 1, 1, 5))
    dropped = reference_attention(q, k[:, :, keep], v[:, :, keep])
    torch.testing.assert_close(out, dropped, atol=ATOL, rtol=0)


def test_bias_hand_computed() -> None:
    # equal scores, bias [0, log 3] -> weights [1/4, 3/4]
    q, k = torch.zeros(1, 1, 1, 2), _rand(1, 1, 2, 2)
    bias = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 1, 2)
    probs = reference_probs(q, k, k, bias=bias).flatten()
    torch.testing.assert_close(probs, torch.tensor([0.25, 0.75], dtype=torch.float64))


def test_bias_of_minus_inf_on_a_whole_row_gives_zeros() -> None:
    q, k, v = _rand(1, 1, 2, 4), _rand(1, 1, 3, 4, seed=1), _rand(1, 1, 3, 4, seed=2)
    bias = torch.zeros(1, 1, 2, 3)
    bias[..., 0, :] = float("-inf")
    out = reference_attention(q, k, v, bias=bias)
    assert not torch.isnan(out).any()
    assert (out[..., 0, :] == 0).all()


def test_probability_rows_sum_to_one_or_zero() -> None:
    q, k = _rand(2, 3, 5, 4), _rand(2, 3, 7, 4, seed=1)
    mask = _rand(2, 1, 5, 7, seed=3) > 0.3
    probs = reference_probs(q, k, k, mask=mask, causal=True)
    allowed_any = (mask & torch.ones(5, 7, dtype=torch.bool).tril(2)).any(-1)
    sums = probs.sum(-1)
    torch.testing.assert_close(sums, allowed_any.to(torch.float64).expand_as(sums))
    assert (probs >= 0).all()


def test_single_kv_head_broadcasts_to_all_query_heads() -> None:
    q, k, v = _rand(2, 4, 3, 8), _rand(2, 1, 5, 8, seed=1), _rand(2, 1, 5, 6, seed=2)
    out = reference_attention(q, k, v)
    expanded = reference_attention(q, k.expand(2, 4, 5, 8), v.expand(2, 4, 5, 6))
    torch.testing.assert_close(out, expanded, atol=ATOL, rtol=0)


def test_grouped_kv_heads_match_sdpa_enable_gqa() -> None:
    q, k, v = _rand(1, 6, 3, 8), _rand(1, 2, 5, 8, seed=1), _rand(1, 2, 5, 8, seed=2)
    out = reference_attention(q, k, v)
    expected = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


def test_float32_inputs_give_float64_output() -> None:
    q, k, v = (_rand(1, 2, 3, 4, seed=s).float() for s in range(3))
    out = reference_attention(q, k, v)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference_attention(q.double(), k.double(), v.double()))


@pytest.mark.parametrize("i,j", [(5, 5), (3, 7), (1, 6)])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_sdpa_float64(i: int, j: int, causal: bool) -> None:
    q, k, v = _rand(2, 3, i, 8), _rand(2, 3, j, 8, seed=1), _rand(2, 3, j, 5, seed=2)
    bias = _rand(1, 3, i, j, seed=4)
    pad = torch.ones(2, 1, 1, j, dtype=torch.bool)
    pad[1, ..., 0] = False
    # SDPA's is_causal is top-left aligned, so give it an explicit bottom-right mask.
    sdpa_mask = pad & torch.ones(i, j, dtype=torch.bool).tril(j - i) if causal else pad
    float_mask = bias.masked_fill(~sdpa_mask, float("-inf"))
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=float_mask, scale=0.3)
    out = reference_attention(q, k, v, mask=pad, bias=bias, causal=causal, scale=0.3)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


def test_causal_square_matches_sdpa_is_causal() -> None:
    q, k, v = _rand(1, 2, 6, 4), _rand(1, 2, 6, 4, seed=1), _rand(1, 2, 6, 4, seed=2)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(
        reference_attention(q, k, v, causal=True), expected, atol=ATOL, rtol=0
    )


def test_gradients_match_sdpa_and_stay_finite_with_dead_rows() -> None:
    q, k, v = (_rand(1, 2, 4, 4, seed=s).requires_grad_() for s in range(3))
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    mask[..., 0, :] = False  # a dead row: its output is zero and must not poison gradients
    out = reference_attention(q, k, v, mask=mask)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[0][..., 0, :] == 0).all()

    live = slice(1, None)
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    sdpa = F.scaled_dot_product_attention(q2[..., live, :], k2, v2)
    sdpa_grads = torch.autograd.grad(sdpa.square().sum(), (q2, k2, v2))
    for g, ref in zip(grads, sdpa_grads):
        torch.testing.assert_close(g, ref, atol=1e-10, rtol=0)


def test_rejects_float_mask_and_bad_head_counts() -> None:
    q, k = _rand(1, 4, 2, 4), _rand(1, 4, 3, 4, seed=1)
    with pytest.raises(TypeError, match="mask"):
        reference_attention(q, k, k, mask=torch.ones(1, 1, 2, 3))
    k3 = _rand(1, 3, 3, 4)
    with pytest.raises(ValueError, match="does not divide"):
        reference_attention(q, k3, k3)
    with pytest.raises(ValueError, match="4-D"):
        reference_attention(q[0], k[0], k[0])
