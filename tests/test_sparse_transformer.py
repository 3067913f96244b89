"""Sparse Transformer (Child et al., 1904.10509): strided and fixed patterns.

The expected index sets are written out from the paper's definitions with loops (independent of
the rule code); the block-sparse kernel is compared with the float64 dense reference in values
and gradients; models are causal, decode with the cache exactly, ignore padded keys, and a
pattern covering everything equals full attention.
"""

from __future__ import annotations

import pytest
import torch
from flag_models import VOCAB, prefill_then_steps, tokens
from reference import reference_attention

from x_attn import Decoder, Encoder, TransformerWrapper
from x_attn.kernels.block_sparse import block_sparse_attention
from x_attn.kernels.inputs import AttnInputs
from x_attn.masks.causal import CAUSAL
from x_attn.masks.sparse import Fixed, Strided
from x_attn.masks.spec import AttnMask, Span
from x_attn.per_layer import per_layer

DIMS = dict(dim=16, depth=2, heads=2, attn_dim_head=8)


def paper_sets(pattern: str, n: int, l: int, c: int = 0, causal: bool = True) -> torch.Tensor:
    """(n, n) bool: A(1)_i | A(2)_i of the paper, one index at a time (Child et al. 2019, 3.2).

    strided: A(1) = {t, ..., i} with t = max(0, i - l); A(2) = {j : (i - j) mod l = 0}.
    fixed: A(1) = {j : floor(j / l) = floor(i / l)}; A(2) = {j : j mod l in {l - c, ..., l - 1}}.
    Causal: only j <= i. Bidirectional: strided looks the same way ahead (|i - j| <= l, and
    the residue class both ways); fixed is unchanged but for the causal cut.
    """
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            if causal and j > i:
                continue
            if pattern == "strided":
                first = j in range(max(0, i - l), i + 1) or j in range(i, min(n, i + l + 1))
                second = (i - j) % l == 0
            else:
                first = j // l == i // l
                second = j % l in range(l - c, l)
            allowed[i, j] = first or second
    return allowed


def rule_of(pattern: str, l: int, c: int):
    return Strided(l) if pattern == "strided" else Fixed(l, c)


CASES = [("strided", 3, 0), ("strided", 4, 0), ("fixed", 4, 1), ("fixed", 3, 2)]


@pytest.mark.parametrize(("pattern", "l", "c"), CASES)
@pytest.mark.parametrize("causal", [True, False])
def test_rule_matches_the_papers_sets(pattern, l, c, causal):
    n = 17
    rules = ((CAUSAL,) if causal else ()) + (rule_of(pattern, l, c),)
    dense = AttnMask(Span(0, n), Span(0, n), rules).dense()
    assert torch.equal(dense, paper_sets(pattern, n, l, c, causal))


def test_paper_row_counts_and_two_hop_coverage():
    """n = 64, l = 8, c = 2: strided rows have at most 9 (A1) and 8 (A2) entries, and two
    hops of either pattern's A(2) after A(1) reach every causal pair (paper section 3.2)."""
    n, l, c = 64, 8, 2
    a1 = torch.tensor([[max(0, i - l) <= j <= i for j in range(n)] for i in range(n)])
    a2 = torch.tensor([[j <= i and (i - j) % l == 0 for j in range(n)] for i in range(n)])
    assert a1.sum(-1).max() == 9 and a2.sum(-1).max() == 8
    reach = (a2.double() @ a1.double()) > 0
    assert torch.equal(reach, torch.ones(n, n, dtype=torch.bool).tril())
    f1 = torch.tensor([[j <= i and j // l == i // l for j in range(n)] for i in range(n)])
    f2 = torch.tensor([[j <= i and j % l >= l - c for j in range(n)] for i in range(n)])
    reach = ((f2.double() @ f1.double()) > 0) | f1  # a summary key, then its block
    assert torch.equal(reach, torch.ones(n, n, dtype=torch.bool).tril())
    merged = AttnMask(Span(0, n), Span(0, n), (CAUSAL, Strided(l))).dense()
    assert torch.equal(merged, a1 | a2)


def qkv(i, j, heads=2, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, heads, i, 4, generator=g, dtype=torch.float64)
    k, v = (torch.randn(b, heads, j, 4, generator=g, dtype=torch.float64) for _ in range(2))
    return q, k, v


@pytest.mark.parametrize(("pattern", "l", "c"), CASES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("queries", [19, 5, 1])  # all, a chunk after a prefix, a decode step
def test_kernel_matches_dense_reference(pattern, l, c, causal, queries):
    n = 19  # not a multiple of any l used
    q, k, v = qkv(queries, n)
    padding = torch.ones(2, n, dtype=torch.bool)
    padding[1, :2] = False
    bias = torch.randn(2, 1, queries, n, dtype=torch.float64)
    rules = ((CAUSAL,) if causal else ()) + (rule_of(pattern, l, c),)
    spec = AttnMask(Span(n - queries, n), Span(0, n), rules, padding).with_free(2)
    free = torch.randn(2, 2, 2, 4, dtype=torch.float64)
    k, v = torch.cat((free, k), dim=2), torch.cat((free.flip(-1), v), dim=2)
    bias = torch.cat((bias.new_zeros(2, 1, queries, 2), bias), dim=-1)
    for leaf in (q, k, v):
        leaf.requires_grad_(True)
    out = block_sparse_attention(AttnInputs(q, k, v, bias=bias, scale=0.5, spec=spec))
    allowed = paper_sets(pattern, n, l, c, causal)[n - queries :] & padding[:, None, None]
    allowed = torch.cat((torch.ones(2, 1, queries, 2, dtype=torch.bool), allowed), dim=-1)
    ref = reference_attention(q, k, v, mask=allowed, bias=bias, scale=0.5)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_fully_masked_rows_are_zero_without_nan_gradients():
    q, k, v = qkv(9, 9, b=1)
    padding = torch.zeros(1, 9, dtype=torch.bool)
    padding[0, 5:] = True  # queries 0..4 see no key at all
    spec = AttnMask(Span(0, 9), Span(0, 9), (CAUSAL, Strided(2)), padding)
    q.requires_grad_(True)
    out = block_sparse_attention(AttnInputs(q, k, v, spec=spec))
    assert torch.equal(out[:, :, :5], torch.zeros_like(out[:, :, :5]))
    (grad,) = torch.autograd.grad(out.sum(), q)
    assert torch.isfinite(grad).all()


def test_default_path_forms_no_dense_mask(monkeypatch):
    """The block-sparse kernel asks the mask description for blocks only, never dense()."""

    def refuse(*args, **kwargs):
        raise AssertionError("a dense (i, j) mask was formed")

    monkeypatch.setattr(AttnMask, "dense", refuse)
    net = Decoder(**DIMS, attn_sparse_pattern="strided", attn_sparse_block=3)
    net(torch.randn(1, 20, 16), mask=torch.ones(1, 20, dtype=torch.bool))
    assert "): block_sparse:" in net.explain()[0]


def wrapper(seed=0, cls=Decoder, **layers):
    torch.manual_seed(seed)
    net = TransformerWrapper(num_tokens=VOCAB, max_seq_len=64, attn_layers=cls(**DIMS, **layers))
    return net.double().eval()


FLAGS = [
    dict(attn_sparse_pattern="strided", attn_sparse_block=3, rotary_pos_emb=True),
    dict(attn_sparse_pattern="fixed", attn_sparse_block=4, attn_sparse_summary=1),
    dict(attn_sparse_pattern=per_layer(("strided", "fixed")), attn_sparse_block=3),
]


@pytest.mark.parametrize("flags", FLAGS)
def test_cached_decode_equals_full_forward(flags):
    net = wrapper(**flags)
    x = tokens(2, 23)
    with torch.no_grad():
        full = net(x)
    steps, cache = prefill_then_steps(net, x, 10)
    torch.testing.assert_close(steps, full, rtol=0, atol=1e-9)
    held = [e for e in cache.entries if e is not None]
    assert all(e.k.shape[-2] == 23 for e in held)  # the full cache: every past key is kept


@pytest.mark.parametrize("flags", FLAGS[:2])
def test_future_tokens_change_nothing(flags):
    net = wrapper(**flags)
    x = tokens(1, 16)
    changed = x.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % VOCAB
    with torch.no_grad():
        torch.testing.assert_close(net(changed)[:, :9], net(x)[:, :9], rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", [Decoder, Encoder])
def test_padded_keys_change_nothing(cls):
    net = wrapper(cls=cls, attn_sparse_pattern="fixed", attn_sparse_block=3)
    x = tokens(2, 11)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[:, 8:] = False
    changed = x.clone()
    changed[:, 8:] = (changed[:, 8:] + 5) % VOCAB
    with torch.no_grad():
        out, other = net(x, mask=mask), net(changed, mask=mask)
    torch.testing.assert_close(other[:, :8], out[:, :8], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "flags",
    [
        dict(attn_sparse_pattern="strided", attn_sparse_block=1),  # every distance a multiple
        dict(attn_sparse_pattern="strided", attn_sparse_block=12),  # the band covers all
        dict(attn_sparse_pattern="fixed", attn_sparse_block=4, attn_sparse_summary=4),
        dict(attn_sparse_pattern="fixed", attn_sparse_block=12),  # one block
    ],
)
@pytest.mark.parametrize("cls", [Decoder, Encoder])
def test_pattern_covering_everything_equals_full_attention(flags, cls):
    x = tokens(2, 12)
    with torch.no_grad():
        full = wrapper(cls=cls)(x)
        torch.testing.assert_close(wrapper(cls=cls, **flags)(x), full, rtol=0, atol=1e-12)


def test_a_sparse_pattern_changes_the_output():
    x = tokens(2, 12)
    with torch.no_grad():
        full = wrapper()(x)
        sparse = wrapper(attn_sparse_pattern="fixed", attn_sparse_block=3, attn_sparse_summary=1)
        assert not torch.allclose(sparse(x), full)


def test_return_attn_maps_follow_the_pattern():
    net = Decoder(**DIMS, attn_sparse_pattern="strided", attn_sparse_block=3).double().eval()
    _, inter = net(
        torch.randn(1, 10, 16, dtype=torch.float64), return_hiddens=True, return_attn=True
    )
    assert inter.kernels[0] == "manual"
    assert torch.equal(inter.attn_maps[0][0, 0] > 0, paper_sets("strided", 10, 3))


def test_dense_fallback_is_explained_and_flash_true_is_refused():
    layers = Decoder(
        **DIMS, attn_sparse_pattern="fixed", attn_sparse_block=4, attn_talking_heads=True
    )
    assert "manual" in layers.explain()[0] and "dense (i, j) mask" in layers.explain()[0]
    with pytest.raises(ValueError, match="attn_talking_heads"):
        Decoder(**DIMS, attn_sparse_pattern="fixed", attn_talking_heads=True, attn_flash=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(attn_sparse_pattern="dilated"), "attn_sparse_pattern"),
        (dict(attn_sparse_block=8), "attn_sparse_pattern"),
        (dict(attn_sparse_pattern="fixed", attn_sparse_block=0), "attn_sparse_block"),
        (dict(attn_sparse_pattern="strided", attn_sparse_summary=2), "attn_sparse_summary"),
        (dict(attn_sparse_pattern="fixed", attn_sparse_block=4, attn_sparse_summary=5), "at most"),
        (dict(attn_sparse_pattern="fixed", attn_bigbird=True), "choose one"),
        (dict(attn_sparse_pattern="fixed", attn_linear_attn=True), "attn_linear_attn"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Decoder(**DIMS, **kwargs)
