"""Reformer LSH attention (arXiv 2001.04451) against independent references, float64.

The exact limit: with one bucket and a chunk at least as long as the sequence, LSH attention is
dense shared-QK attention (keys = unit queries) in which a query sees itself only when no other
key is visible; that reference is the naive oracle of tests/reference.py with the mask written
here. Strict causality (changing later tokens changes no earlier output) at lengths of several
chunks and not divisible by the chunk; padding invariance (a padded row equals the row alone);
gradients in the one-bucket limit; hash invariances; the reversible stack's recomputation.

Shape legend: b batch, h heads, n positions, d head dim, e value dim.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference import reference_attention
from torch import Tensor

from x_attn import Attention, Decoder, Encoder, TransformerWrapper
from x_attn.attention.features.lsh import LSHHasher, LSHRule
from x_attn.kernels.inputs import AttnInputs
from x_attn.kernels.lsh import lsh_attention, lsh_attention_maps
from x_attn.masks.causal import CAUSAL
from x_attn.masks.spec import AttnMask, Span

ATOL = 1e-12


def rand(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def lsh(q, v, causal, bucket, rounds=3, real=None, n_buckets=None, maps=False, seed=0):
    """LSH attention with keys = unit queries, through the kernel."""
    torch.manual_seed(seed)
    hasher = LSHHasher(rounds).eval()
    n = q.shape[-2]
    rules = (CAUSAL,) if causal else ()
    spec = AttnMask(Span(0, n), Span(0, n), (*rules, LSHRule(hasher, bucket, n_buckets)), real)
    inputs = AttnInputs(q, F.normalize(q, dim=-1), v, scale=0.4, spec=spec)
    return lsh_attention_maps(inputs) if maps else lsh_attention(inputs)


def dense_shared_qk(q: Tensor, v: Tensor, causal: bool, real: Tensor | None = None) -> Tensor:
    """Dense shared-QK attention; a query sees itself only when nothing else is visible."""
    b, _, n, _ = q.shape
    allowed = torch.ones(b, 1, n, n, dtype=torch.bool)
    if real is not None:
        allowed &= real[:, None, None, :]
    if causal:
        allowed &= torch.ones(n, n, dtype=torch.bool).tril()
    eye = torch.eye(n, dtype=torch.bool)
    others = allowed & ~eye
    alone = ~others.any(-1, keepdim=True)
    mask = others | (alone & eye & allowed)
    return reference_attention(q, F.normalize(q, dim=-1), v, mask=mask, scale=0.4)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("n", "bucket"), [(7, 7), (9, 16), (1, 4)])
def test_one_bucket_equals_dense_shared_qk(causal: bool, n: int, bucket: int) -> None:
    q, v = rand(2, 3, n, 8, seed=1), rand(2, 3, n, 5, seed=2)
    real = torch.ones(2, n, dtype=torch.bool)
    real[0, n // 2] = False  # a padded key in the middle, and padded queries
    expected = dense_shared_qk(q, v, causal, real)
    got = lsh(q, v, causal, bucket, real=real)
    keep = real[:, None, :, None].expand_as(got)
    torch.testing.assert_close(got[keep], expected[keep], atol=ATOL, rtol=0)


def test_fixed_single_bucket_equals_dense_whatever_the_chunk() -> None:
    """n_buckets=1: every key is in one bucket; a chunk >= n makes one window."""
    q, v = rand(1, 2, 11, 8, seed=3), rand(1, 2, 11, 4, seed=4)
    got = lsh(q, v, True, bucket=11, n_buckets=1)
    torch.testing.assert_close(got, dense_shared_qk(q, v, True), atol=ATOL, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_equal_dense_reference_in_the_one_bucket_limit(causal: bool) -> None:
    q0, v0 = rand(2, 2, 6, 8, seed=5), rand(2, 2, 6, 3, seed=6)
    weight = rand(2, 2, 6, 3, seed=7)
    grads = []
    for fn in (lambda q, v: lsh(q, v, causal, 8), lambda q, v: dense_shared_qk(q, v, causal)):
        q, v = q0.clone().requires_grad_(), v0.clone().requires_grad_()
        (fn(q, v) * weight).sum().backward()
        grads.append((q.grad, v.grad))
    for got, expected in zip(grads[0], grads[1]):
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)


def test_gradcheck_with_several_buckets() -> None:
    q, v = rand(1, 1, 7, 4, seed=8).requires_grad_(), rand(1, 1, 7, 2, seed=9).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: lsh(a, b, True, 3, rounds=2), (q, v))


@pytest.mark.parametrize("seed", range(4))
def test_causal_is_strict_over_several_chunks(seed: int) -> None:
    """n = 29 (not a multiple of the chunk 4), 8 buckets: later tokens change nothing before."""
    q, v = rand(2, 2, 29, 8, seed=10 + seed), rand(2, 2, 29, 4, seed=20 + seed)
    t = 13
    q2, v2 = q.clone(), v.clone()
    q2[..., t:, :] = rand(2, 2, 29 - t, 8, seed=30 + seed)  # rehashes every later token
    v2[..., t:, :] += 1.0
    a, b = lsh(q, v, True, 4, seed=seed), lsh(q2, v2, True, 4, seed=seed)
    torch.testing.assert_close(a[..., :t, :], b[..., :t, :], atol=ATOL, rtol=0)  # sum order
    assert (a[..., t:, :] - b[..., t:, :]).abs().max() > 1e-3


def test_causal_query_sees_at_most_bucket_size_keys_of_its_bucket() -> None:
    q, v = rand(1, 2, 23, 8, seed=11), rand(1, 2, 23, 4, seed=12)
    _, maps = lsh(q, v, True, 3, rounds=1, maps=True)
    probs = maps.probs
    assert ((probs > 0).sum(-1) <= 3).all()
    assert (probs.triu(1) == 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 2, 23, dtype=torch.float64))


@pytest.mark.parametrize("causal", [False, True])
def test_padded_row_equals_the_row_alone(causal: bool) -> None:
    """Padding (left, middle, right) moves no real token between chunks or buckets."""
    n, real_n = 19, 13
    q, v = rand(1, 2, real_n, 8, seed=13), rand(1, 2, real_n, 4, seed=14)
    real = torch.zeros(1, n, dtype=torch.bool)
    slots = torch.tensor([2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16])
    real[0, slots] = True
    qp = rand(1, 2, n, 8, seed=15).index_copy(2, slots, q)  # padded rows: random content
    vp = rand(1, 2, n, 4, seed=16).index_copy(2, slots, v)
    alone = lsh(q, v, causal, 3)
    padded = lsh(qp, vp, causal, 3, real=real)
    torch.testing.assert_close(padded[..., slots, :], alone, atol=ATOL, rtol=0)


def test_rounds_combine_to_convex_weights_that_reproduce_the_output() -> None:
    q, v = rand(2, 2, 17, 8, seed=17), rand(2, 2, 17, 4, seed=18)
    out, maps = lsh(q, v, False, 4, rounds=4, maps=True)
    torch.testing.assert_close(maps.probs.sum(-1), torch.ones(2, 2, 17, dtype=torch.float64))
    assert (maps.probs >= 0).all()
    torch.testing.assert_close(maps.probs @ v, out, atol=ATOL, rtol=0)
    diagonal = maps.probs.diagonal(dim1=-2, dim2=-1)
    assert (diagonal == 0).all()  # every query had another key: itself weighs exactly 0


def test_angular_hash_is_scale_invariant_and_antipodal() -> None:
    hasher = LSHHasher(3).eval()
    x = rand(2, 2, 9, 8, seed=19)
    h = hasher.buckets(x, [6, 6])
    assert torch.equal(hasher.buckets(3.5 * x, [6, 6]), h)
    assert torch.equal(hasher.buckets(-x, [6, 6]), (h + 3) % 6)
    assert h.min() >= 0 and h.max() < 6


def test_hash_is_the_argmax_over_the_rotation_and_its_negation() -> None:
    """h(x) = argmax([xR ; -xR]) written out (Reformer, arXiv 2001.04451), ties to the first:
    a zero key projects to all zeros and takes bucket 0."""
    hasher = LSHHasher(3).eval()
    x = rand(2, 2, 9, 8, seed=23)
    x[0, 1, 4] = 0.0
    rot = hasher.rotations(8, 10, x.device, x.dtype)
    projected = torch.einsum("bhnd,rdu->bhrnu", x, rot)
    want = torch.cat((projected, -projected), dim=-1).argmax(dim=-1)
    got = hasher.buckets(x, [10, 10])
    assert torch.equal(got, want) and (got[0, 1, :, 4] == 0).all()
    assert set(got.unique().tolist()) > set(range(5)) and got.max() < 10


def test_rotations_fixed_at_eval_fresh_in_training() -> None:
    hasher = LSHHasher(2).eval()
    first = hasher.rotations(8, 4, torch.device("cpu"), torch.float64)
    assert torch.equal(hasher.rotations(8, 4, torch.device("cpu"), torch.float64), first)
    hasher.train()
    a = hasher.rotations(8, 4, torch.device("cpu"), torch.float64)
    assert not torch.equal(hasher.rotations(8, 4, torch.device("cpu"), torch.float64), a)


def lsh_model(stack=Decoder, **extra) -> TransformerWrapper:
    torch.manual_seed(0)
    flags = dict(dim=16, depth=2, heads=2, attn_dim_head=8, attn_lsh=True)
    flags.update(attn_lsh_bucket_size=3, attn_lsh_n_hashes=2, **extra)
    return TransformerWrapper(num_tokens=20, max_seq_len=32, attn_layers=stack(**flags)).double()


def test_reversible_stack_recomputes_with_the_same_rotations(monkeypatch) -> None:
    """Reformer's other half: train-mode reversible gradients (recomputed, rotations drawn
    afresh) equal plain autograd with the same draws; without the RNG replay they would not."""
    from x_attn.layers import reversible

    model = lsh_model(reversible=True)
    x = torch.randint(0, 20, (2, 13), generator=torch.Generator().manual_seed(1))

    def grads(train_stack: bool) -> dict[str, Tensor]:
        model.train(train_stack)
        for module in model.modules():
            if isinstance(module, LSHHasher):
                module.train()  # fresh rotations from the global generator in both runs
        model.zero_grad(set_to_none=True)
        torch.manual_seed(42)
        (model(x) * rand(2, 13, 20, seed=3)).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    recomputed, plain = grads(True), grads(False)  # eval stack: ordinary autograd
    for name, g in plain.items():
        torch.testing.assert_close(recomputed[name], g, atol=1e-10, rtol=1e-8, msg=name)
    monkeypatch.setattr(reversible._RngSnapshot, "restore", lambda self: None)
    broken = grads(True)
    assert max((broken[n] - g).abs().max().item() for n, g in plain.items()) > 1e-6


def test_model_generates_without_a_cache_and_says_why() -> None:
    from x_attn import AutoregressiveWrapper

    wrapper = AutoregressiveWrapper(lsh_model().eval())
    assert "attn_lsh" in wrapper.uncacheable_reason
    with pytest.warns(RuntimeWarning, match="attn_lsh"):
        out = wrapper.generate(torch.tensor([[1, 2, 3]]), 4, temperature=0.0)
    assert out.shape == (1, 4)


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (dict(attn_lsh_bucket_size=4), "attn_lsh=True"),
        (dict(attn_lsh=True, attn_lsh_n_buckets=3), "attn_lsh_n_buckets"),
        (dict(attn_lsh=True, attn_lsh_bucket_size=0), "attn_lsh_bucket_size"),
        (dict(attn_lsh=True, attn_dropout=0.1), "attn_dropout"),
        (dict(attn_lsh=True, attn_num_mem_kv=2), "attn_num_mem_kv"),
        (dict(attn_lsh=True, attn_linear_attn=True), "attn_lsh"),
        (dict(attn_lsh=True, alibi_pos_bias=True), "alibi_pos_bias"),
        (dict(attn_lsh=True, attn_flash=True), "attn_flash=True"),
        (dict(cross_attend=True, cross_attn_lsh=True), "cross_attn_lsh"),
    ],
)
def test_refusals_name_the_flags(flags: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Encoder(dim=16, depth=1, heads=2, **flags)


def test_call_time_refusals() -> None:
    layer = Attention(16, heads=2, dim_head=8, causal=True, lsh=True).double()
    x = rand(1, 5, 16, seed=4)
    with pytest.raises(ValueError, match="attn_mask"):
        layer(x, attn_mask=torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="cache"):
        layer(x, cache=layer.new_cache_entry())
    assert layer.explain().startswith("lsh:")
