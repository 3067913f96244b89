"""Performer FAVOR+ (arXiv 2009.14794): orthogonal features, error vs exact softmax, redraws.

The reference is exact softmax attention softmax(q k^T / sqrt(d)) v written here; the
estimator's error must fall as the number of features grows (fixed seeds, averaged draws,
moderate norms, as the paper's variance bound requires).

Shape legend: b batch, h heads, n positions, d head dim, m features.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from x_attn import Attention, Decoder
from x_attn.attention.features.performer import FavorFeatureMap, orthogonal_gaussian
from x_attn.cache.state import StateEntry
from x_attn.kernels.inputs import AttnInputs
from x_attn.kernels.linear import linear_attention
from x_attn.masks.causal import CAUSAL
from x_attn.masks.spec import AttnMask, Span


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    d, n = q.shape[-1], q.shape[-2]
    logits = q @ k.transpose(-1, -2) / d**0.5
    if causal:
        logits = logits.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return logits.softmax(-1) @ v


def favor(q: Tensor, k: Tensor, v: Tensor, m: int, causal: bool) -> Tensor:
    fmap = FavorFeatureMap(q.shape[-1], m, None).double().eval()
    n = q.shape[-2]
    spec = AttnMask(Span(0, n), Span(0, n), (CAUSAL,) if causal else ())
    inputs = AttnInputs(fmap(q, True), fmap(k, False), v, spec=spec)
    return linear_attention(inputs, StateEntry(chunk=8))


def test_directions_are_orthogonal_and_uniform() -> None:
    g = torch.Generator().manual_seed(0)
    w = orthogonal_gaussian(8, 8, g)
    gram = w @ w.T
    torch.testing.assert_close(gram, torch.diag(torch.diagonal(gram)), atol=1e-10, rtol=0)
    firsts = torch.stack([orthogonal_gaussian(8, 8, g)[0, 0] for _ in range(300)])
    assert 0.35 < (firsts > 0).double().mean() < 0.65  # without the sign fix: always < 0
    rows = torch.cat([orthogonal_gaussian(8, 8, g) for _ in range(300)])
    unit = rows / rows.norm(dim=-1, keepdim=True)
    assert unit.mean(0).norm() < 0.05  # uniform directions average out


@pytest.mark.parametrize("causal", [False, True])
def test_error_against_softmax_falls_with_the_number_of_features(causal: bool) -> None:
    errors = []
    for m in (16, 64, 256, 1024):
        runs = []
        for seed in range(10):
            torch.manual_seed(seed)
            q, k = (0.5 * torch.randn(1, 2, 24, 16, dtype=torch.float64) for _ in range(2))
            v = torch.randn(1, 2, 24, 8, dtype=torch.float64)
            exact = softmax_attention(q, k, v, causal)
            got = favor(q, k, v, m, causal)
            runs.append(((got - exact).abs().sum() / exact.abs().sum()).item())
        errors.append(sum(runs) / len(runs))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[1], errors  # about 1 / sqrt(m): 1024 vs 64 is 1/4


def test_causal_prefix_sums_equal_the_masked_kernel_matrix() -> None:
    torch.manual_seed(3)
    fmap = FavorFeatureMap(8, 32, None).double()
    q, k = (torch.randn(2, 2, 11, 8, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, 2, 11, 4, dtype=torch.float64)
    fq, fk = fmap(q, True), fmap(k, False)
    a = (fq @ fk.transpose(-1, -2)).tril()
    expected = a @ v / a.sum(-1, keepdim=True)
    spec = AttnMask(Span(0, 11), Span(0, 11), (CAUSAL,))
    got = linear_attention(AttnInputs(fq, fk, v, spec=spec), StateEntry(chunk=4))
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("is_query", [True, False])
def test_features_and_their_gradients_are_the_papers_with_its_stabilisers(is_query) -> None:
    """phi(x) = exp(W x' - |x'|^2 / 2 - shift) / sqrt(m), x' = x d^(-1/4), the shift a query
    row's own largest exponent (held constant) or max_i |w_i|^2 / 2 for keys, written out."""
    torch.manual_seed(0)
    fmap = FavorFeatureMap(8, 20, None).double().eval()
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64, requires_grad=True)
    w = fmap.projection
    xs = x * 8**-0.25
    log = torch.einsum("bhnd,md->bhnm", xs, w) - (xs**2).sum(-1, keepdim=True) / 2
    shift = log.amax(-1, keepdim=True).detach() if is_query else (w**2).sum(-1).max() / 2
    want = torch.exp(log - shift) / 20**0.5
    got = fmap(x, is_query)
    torch.testing.assert_close(got, want, atol=1e-14, rtol=1e-12)
    weights = torch.randn_like(want)
    grads = [torch.autograd.grad((t * weights).sum(), x)[0] for t in (got, want)]
    torch.testing.assert_close(*grads, atol=1e-13, rtol=1e-12)


def test_features_redraw_in_training_on_schedule_and_freeze_in_eval() -> None:
    torch.manual_seed(0)
    layer = Attention(16, heads=2, dim_head=8, performer=True, performer_redraw_interval=2)
    fmap = layer.proj.feature_map
    x = torch.randn(1, 5, 16)
    first = fmap.projection.clone()
    layer.eval()
    for _ in range(3):
        layer(x)
    assert torch.equal(fmap.projection, first)  # frozen at eval
    layer.train()
    layer(x)
    layer(x)
    assert torch.equal(fmap.projection, first)  # two calls: not yet
    layer(x)
    assert not torch.equal(fmap.projection, first)  # the third call draws anew
    assert "proj.feature_map.projection" in layer.state_dict()  # saved with the model


def test_default_number_of_features_is_d_log_d() -> None:
    layer = Attention(16, heads=2, dim_head=16, performer=True)
    assert layer.proj.feature_map.projection.shape == (int(16 * torch.log(torch.tensor(16.0))), 16)


def test_refusals() -> None:
    with pytest.raises(ValueError, match="attn_performer_nb_features"):
        Decoder(dim=16, depth=1, attn_performer_nb_features=8)
    with pytest.raises(ValueError, match="attn_linear_attn and attn_performer"):
        Decoder(dim=16, depth=1, attn_linear_attn=True, attn_performer=True)
    with pytest.raises(ValueError, match="alibi_pos_bias"):
        Decoder(dim=16, depth=1, attn_performer=True, alibi_pos_bias=True)
