"""BigBird (Zaheer et al., 2007.14062): window + global + random blocks, encoder only.

The dense mask is checked against the block formula written out with loops (the random table
enters as data); the table against its definition (uniform over eligible blocks, never a
window or global block, deterministic per seed, layer and length); the block-sparse kernel
against the float64 reference in values and gradients; models against full attention when the
blocks cover everything, and the Decoder refusal.
"""

from __future__ import annotations

import pytest
import torch
from flag_models import VOCAB, tokens
from reference import reference_attention

from x_attn import Decoder, Encoder, TransformerWrapper
from x_attn.kernels.block_sparse import block_sparse_attention
from x_attn.kernels.inputs import AttnInputs
from x_attn.masks.bigbird import BigBird
from x_attn.masks.spec import AttnMask, Span

DIMS = dict(dim=16, depth=2, heads=2, attn_dim_head=8)


def hand_mask(n: int, b: int, w: int, g: int, table: torch.Tensor) -> torch.Tensor:
    """(n, n) bool from Appendix A: |I - J| <= w // 2, I or J global (first ceil(g/2), last
    g // 2 blocks), or J in R[I]."""
    n_b = -(-n // b)
    glob = set(range((g + 1) // 2)) | set(range(n_b - g // 2, n_b))
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            big_i, big_j = i // b, j // b
            near = abs(big_i - big_j) <= w // 2
            drawn = big_j in table[big_i].tolist()
            allowed[i, j] = near or big_i in glob or big_j in glob or drawn
    return allowed


@pytest.mark.parametrize(("b", "w", "g", "r"), [(2, 3, 2, 1), (3, 1, 1, 2), (2, 3, 0, 2)])
def test_dense_mask_matches_the_block_formula(b, w, g, r):
    n = 23  # the last block is short
    rule = BigBird(b, w, g, r, seed=3).for_length(n)
    dense = AttnMask(Span(0, n), Span(0, n), (rule,)).dense()
    assert torch.equal(dense, hand_mask(n, b, w, g, rule.table()))


def test_random_blocks_are_eligible_distinct_and_deterministic():
    n_b, r = 12, 3
    table = BigBird(4, 3, 2, r, seed=1, layer=2).for_length(4 * n_b).table()
    assert table.shape == (n_b, r)
    for row in range(n_b):
        drawn = table[row].tolist()
        assert len(set(drawn)) == r  # 12 blocks leave at least 7 eligible ones
        for blk in drawn:
            assert abs(blk - row) > 1 and blk not in (0, n_b - 1)
    again = BigBird(4, 3, 2, r, seed=1, layer=2).for_length(4 * n_b).table()
    assert torch.equal(table, again)  # the same layer, seed and length: the same blocks
    other = BigBird(4, 3, 2, r, seed=1, layer=3).for_length(4 * n_b).table()
    assert not torch.equal(table, other)  # drawn per layer


def test_random_blocks_are_uniform_over_all_eligible_blocks():
    """Over 400 seeds, row 2 of 40 blocks draws each of its 35 eligible blocks about
    400 * 3 / 35 = 34 times (binomial sd ~5.7): every one within [10, 60], far ones included
    (the public bug drew only among the first blocks)."""
    counts = torch.zeros(40, dtype=torch.long)
    for seed in range(400):
        counts += torch.bincount(
            BigBird(1, 3, 2, 3, seed=seed).for_length(40).table()[2], minlength=40
        )
    eligible = [blk for blk in range(1, 39) if abs(blk - 2) > 1]
    assert counts[[0, 1, 2, 3, 39]].sum() == 0
    assert counts[eligible].min() >= 10 and counts[eligible].max() <= 60


def qkv(n, b=2, heads=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, heads, n, 4, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize(("b", "w", "g", "r"), [(2, 3, 2, 1), (3, 1, 1, 2), (4, 3, 2, 1)])
def test_kernel_matches_dense_reference(b, w, g, r):
    n = 21
    q, k, v = qkv(n)
    padding = torch.ones(2, n, dtype=torch.bool)
    padding[1, -3:] = False
    bias = torch.randn(2, 2, n, n, dtype=torch.float64)
    rule = BigBird(b, w, g, r, seed=5).for_length(n)
    spec = AttnMask(Span(0, n), Span(0, n), (rule,), padding)
    for leaf in (q, k, v):
        leaf.requires_grad_(True)
    out = block_sparse_attention(AttnInputs(q, k, v, bias=bias, scale=0.7, spec=spec))
    allowed = hand_mask(n, b, w, g, rule.table()) & padding[:, None, None]
    ref = reference_attention(q, k, v, mask=allowed, bias=bias, scale=0.7)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def encoder(seed=0, **layers):
    torch.manual_seed(seed)
    net = TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=64, attn_layers=Encoder(**DIMS, **layers)
    )
    return net.double()


BIGBIRD = dict(attn_bigbird=True, attn_bigbird_block=2, attn_bigbird_random_blocks=2)


def test_random_blocks_are_fixed_across_calls_and_modes():
    net = encoder(**BIGBIRD)
    x = tokens(2, 24)
    with torch.no_grad():
        first = net.eval()(x)
        assert torch.equal(net(x), first)
        assert torch.equal(net.train()(x), first)  # fixed per layer (no dropout here)


def test_global_rows_see_everything_and_rows_sum_to_one():
    net = encoder(**BIGBIRD).eval()
    with torch.no_grad():
        _, maps = net(tokens(1, 16), return_attn=True)
    for probs in maps:
        torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs[..., 0]))
        assert (probs[:, :, :2] > 0).all() and (probs[:, :, -2:] > 0).all()  # global rows
        assert (probs[:, :, :, :2] > 0).all()  # every row sees the first (global) block
        assert (probs == 0).any()  # and it is sparse


@pytest.mark.parametrize(
    "flags",
    [
        dict(attn_bigbird=True, attn_bigbird_block=4),  # 3 blocks: window + global cover all
        dict(attn_bigbird=True, attn_bigbird_block=1, attn_bigbird_window_blocks=25),
    ],
)
def test_blocks_covering_everything_equal_full_attention(flags):
    x = tokens(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(
            encoder(**flags).eval()(x), encoder().eval()(x), rtol=0, atol=1e-12
        )


def test_a_bigbird_pattern_changes_the_output():
    x = tokens(2, 24)
    with torch.no_grad():
        assert not torch.allclose(encoder(**BIGBIRD).eval()(x), encoder().eval()(x))


def test_decoder_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="encoder pattern"):
        Decoder(**DIMS, attn_bigbird=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(attn_bigbird_block=8), "attn_bigbird"),
        (dict(attn_bigbird=True, attn_bigbird_block=0), "attn_bigbird_block"),
        (dict(attn_bigbird=True, attn_bigbird_window_blocks=2), "odd"),
        (dict(attn_bigbird=True, attn_bigbird_random_blocks=-1), "attn_bigbird_random_blocks"),
        (dict(attn_bigbird="yes"), "attn_bigbird"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Encoder(**DIMS, **kwargs)
