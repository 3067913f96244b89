"""TransformerWrapper(mixture_of_softmax=True): Mixture of Softmaxes (arXiv 1711.03953).

References: the mixture written naively in float64 (loops over components, explicit softmax and
weighted sum of probabilities), x-transformers 2.31 on identical weights (skipped when it is not
installed), causality and cached decoding through the shared invariants.

Shape legend: b batch, n sequence, d model dim, k components, v vocabulary.
"""

from __future__ import annotations

import pytest
import torch

from x_attn import AutoregressiveWrapper, Decoder, Encoder, TransformerWrapper

V, K = 13, 3
LAYERS = dict(dim=16, depth=2, heads=2, attn_dim_head=8)


def model(stack=Decoder, **kw) -> TransformerWrapper:
    torch.manual_seed(0)
    kw = {"mixture_of_softmax": True, "mixture_of_softmax_k": K, **kw}
    net = TransformerWrapper(num_tokens=V, max_seq_len=32, attn_layers=stack(**LAYERS), **kw)
    return net.double().eval()


def tokens(b: int = 2, n: int = 7) -> torch.Tensor:
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(1))


def naive_mixture(net: TransformerWrapper, h: torch.Tensor) -> torch.Tensor:
    """P(v | h) = sum_k pi_k softmax(logits(W_k h))_v, one component at a time."""
    d = h.shape[-1]
    w_mix = net.mixture.to_mixture.weight  # (k d, d)
    w_pi = net.mixture.combine_mixture.weight  # (k, d)
    pi = torch.softmax(h @ w_pi.T, dim=-1)
    probs = torch.zeros(*h.shape[:-1], V, dtype=h.dtype)
    for k in range(K):
        h_k = h @ w_mix[k * d : (k + 1) * d].T
        logits = net._head_logits(h_k, None)
        probs += pi[..., k : k + 1] * torch.softmax(logits, dim=-1)
    return probs


@pytest.mark.parametrize("tie_embedding", [False, True])
def test_output_is_the_log_of_the_naive_mixture(tie_embedding):
    net = model(tie_embedding=tie_embedding)
    x = tokens()
    log_p, h = net(x, return_logits_and_embeddings=True)
    torch.testing.assert_close(log_p.exp(), naive_mixture(net, h), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(2, 7, dtype=torch.float64))


def test_one_component_is_the_plain_softmax():
    """k = 1: pi = 1, so log P = log_softmax of the head on W_1 h."""
    net = model(mixture_of_softmax_k=1)
    x = tokens()
    log_p, h = net(x, return_logits_and_embeddings=True)
    plain = net._head_logits(net.mixture.to_mixture(h), None).log_softmax(-1)
    torch.testing.assert_close(log_p, plain)


def test_rank_exceeds_the_softmax_bottleneck():
    """log P over many contexts has rank > d + 1 with a mixture (the paper's point), while a
    single softmax's log-probabilities (logits minus a per-row constant) have rank <= d + 1."""
    torch.manual_seed(0)
    dim, vocab = 4, 40
    kw = dict(num_tokens=vocab, max_seq_len=64, attn_layers=Encoder(dim=dim, depth=1, heads=1))
    single = TransformerWrapper(**kw).double().eval()
    mos = TransformerWrapper(mixture_of_softmax=True, **kw).double().eval()
    x = torch.randint(0, vocab, (1, 60), generator=torch.Generator().manual_seed(2))
    rank = lambda m: torch.linalg.matrix_rank(m(x)[0].log_softmax(-1)).item()  # noqa: E731
    assert rank(single) <= dim + 1
    assert rank(mos) > dim + 1


def test_loss_and_generation_read_log_probabilities():
    net = model()
    wrapper = AutoregressiveWrapper(net)
    x = tokens()
    log_p = net(x[:, :-1])
    expected = -log_p.gather(-1, x[:, 1:, None]).mean()
    torch.testing.assert_close(wrapper(x), expected)
    out = wrapper.generate(x[:, :2], 5, temperature=0.0, cache_kv=True)
    greedy = x[:, :2]
    for _ in range(5):
        greedy = torch.cat((greedy, net(greedy)[:, -1:].argmax(-1)), dim=1)
    torch.testing.assert_close(out, greedy[:, 2:])


def test_half_precision_gives_no_nan():
    net = model().to(torch.bfloat16)
    out = net(tokens())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_equals_x_transformers_on_identical_weights():
    pytest.importorskip("x_transformers")
    from xt_pairs import token_pair

    ours, theirs = token_pair(
        "Decoder",
        num_tokens=V,
        max_seq_len=32,
        mixture_of_softmax=True,
        mixture_of_softmax_k=K,
        layers=LAYERS,
    )
    ours, theirs = ours.double(), theirs.double()
    x = tokens()
    # x-transformers' stack keeps float32 steps in a float64 model: its plain logits (no
    # mixture) differ from x_attn's by ~1e-7 as well
    torch.testing.assert_close(ours(x), theirs(x).double(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"mixture_of_softmax": False, "mixture_of_softmax_k": 2}, "mixture_of_softmax=True"),
        ({"mixture_of_softmax_k": 0}, "mixture_of_softmax_k"),
        ({"logits_dim": 1}, "logits_dim=1"),
    ],
)
def test_bad_construction(kw, match):
    with pytest.raises(ValueError, match=match):
        model(**kw)
