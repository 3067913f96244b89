"""AutoregressiveWrapper.beam_search against exhaustive search and greedy decoding.

References: the score of every sequence computed independently (one full forward, summed
log-softmax of the chosen tokens), brute force over a tiny vocabulary, greedy generate for one
beam, and the uncached path for the cached one.

Shape legend: b batch, k beams, t generated tokens, v vocabulary.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from x_attn import AutoregressiveWrapper, Decoder, TransformerWrapper

VOCAB = 4


def model(vocab: int = VOCAB, max_seq_len: int = 32, **layers) -> AutoregressiveWrapper:
    torch.manual_seed(0)
    net = TransformerWrapper(
        num_tokens=vocab,
        max_seq_len=max_seq_len,
        attn_layers=Decoder(dim=16, depth=2, heads=2, attn_dim_head=8, **layers),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5 * torch.randn_like(p))  # peaked, varied distributions
    return AutoregressiveWrapper(net).double().eval()


def score(wrapper: AutoregressiveWrapper, prompt: torch.Tensor, seq: torch.Tensor) -> float:
    """Summed log-probability of ``seq`` after ``prompt`` (both 1-D), one full forward."""
    full = torch.cat((prompt, seq)).unsqueeze(0)
    with torch.no_grad():
        log_probs = wrapper.net(full)[0].log_softmax(dim=-1)
    p = prompt.numel()
    return float(sum(log_probs[p - 1 + i, int(tok)] for i, tok in enumerate(seq)))


@pytest.mark.parametrize("cache_kv", [True, False])
def test_exhaustive_width_finds_the_best_sequence(cache_kv: bool) -> None:
    wrapper, t = model(), 3
    prompts = torch.tensor([[1, 2], [3, 0]])
    beams, scores = wrapper.beam_search(
        prompts, t, beams=VOCAB ** (t - 1), return_beams_and_scores=True, cache_kv=cache_kv
    )
    for row in range(2):
        every = {
            seq: score(wrapper, prompts[row], torch.tensor(seq))
            for seq in itertools.product(range(VOCAB), repeat=t)
        }
        ranked = sorted(every.items(), key=lambda kv: -kv[1])
        assert tuple(beams[0, row].tolist()) == ranked[0][0]
        for k in range(beams.shape[0]):  # every returned score is the sequence's true score
            seq = tuple(beams[k, row].tolist())
            assert scores[k, row].item() == pytest.approx(every[seq], abs=1e-9)
        expected = [s for _, s in ranked[: beams.shape[0]]]  # the top-k scores, in order
        torch.testing.assert_close(
            scores[:, row], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-9
        )


def test_one_beam_is_greedy_decoding() -> None:
    wrapper = model(vocab=32)
    prompts = [torch.tensor([1, 2, 3]), torch.tensor([4])]
    greedy = wrapper.generate(prompts, 8, temperature=0.0)
    assert torch.equal(wrapper.beam_search(prompts, 8, beams=1), greedy)


MTA = {"rotary_pos_emb": True, "attn_mta": True, "attn_mta_kernel_q": 3, "attn_mta_kernel_k": 3}


@pytest.mark.parametrize(
    "layers", [{}, {"rotary_pos_emb": True}, MTA], ids=["absolute", "rotary", "multi-token"]
)
def test_cached_equals_uncached(layers) -> None:
    """The cache follows the re-chosen rows, whatever its entries hold (MTA: query rows too)."""
    wrapper = model(vocab=16, **layers)
    prompts = [torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6])]
    a = wrapper.beam_search(prompts, 6, beams=3, return_beams_and_scores=True)
    b = wrapper.beam_search(prompts, 6, beams=3, return_beams_and_scores=True, cache_kv=False)
    assert torch.equal(a[0], b[0])
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-9)


def test_beams_are_distinct_and_sorted() -> None:
    wrapper = model(vocab=16)
    beams, scores = wrapper.beam_search(
        torch.tensor([[1, 2]]), 5, beams=6, return_beams_and_scores=True
    )
    assert beams.shape == (6, 1, 5) and scores.shape == (6, 1)
    assert len({tuple(b) for b in beams[:, 0].tolist()}) == 6
    assert bool((scores[:-1] >= scores[1:]).all())


def test_sliding_window_past_max_seq_len_cached_equals_uncached() -> None:
    wrapper = model(vocab=12, max_seq_len=6, rotary_pos_emb=True)
    prompt = torch.tensor([[1, 2, 3, 4]])
    for restrict in (True, False):
        a = wrapper.beam_search(prompt, 8, beams=3, restrict_to_max_seq_len=restrict)
        b = wrapper.beam_search(
            prompt, 8, beams=3, restrict_to_max_seq_len=restrict, cache_kv=False
        )
        assert torch.equal(a, b)


def test_eos_finishes_a_beam_with_padding_and_a_final_score() -> None:
    wrapper, t, eos = model(), 3, 2
    prompt = torch.tensor([1, 3])
    beams, scores = wrapper.beam_search(
        prompt, t, beams=VOCAB**t, eos_token=eos, return_beams_and_scores=True
    )
    # reference: a sequence ends at its first eos; the rest is padding that costs nothing
    every = {}
    for seq in itertools.product(range(VOCAB), repeat=t):
        cut = seq.index(eos) + 1 if eos in seq else t
        ended = seq[:cut] + (wrapper.pad_value,) * (t - cut)
        every[ended] = score(wrapper, prompt, torch.tensor(seq[:cut]))
    best = max(every.items(), key=lambda kv: kv[1])
    assert tuple(beams[0].tolist()) == best[0]
    assert scores[0].item() == pytest.approx(best[1], abs=1e-9)
    for k in range(beams.shape[0]):
        if torch.isfinite(scores[k]):
            assert scores[k].item() == pytest.approx(every[tuple(beams[k].tolist())], abs=1e-9)


def test_stochastic_beams_are_reproducible_and_scored_exactly() -> None:
    wrapper, prompt = model(vocab=16), torch.tensor([[1, 2], [3, 4]])
    runs = [
        wrapper.beam_search(
            prompt,
            4,
            beams=3,
            stochastic=True,
            temperature=1.5,
            filter_logits_fn="top_k",
            filter_kwargs={"k": 5},
            return_beams_and_scores=True,
            generator=torch.Generator().manual_seed(7),
        )
        for _ in range(2)
    ]
    assert torch.equal(runs[0][0], runs[1][0])
    beams, scores = runs[0]
    for k in range(3):
        for row in range(2):
            assert scores[k, row].item() == pytest.approx(
                score(wrapper, prompt[row], beams[k, row]), abs=1e-9
            )


def test_stochastic_candidates_respect_the_filter() -> None:
    wrapper, prompt = model(vocab=16), torch.tensor([[1, 2]])
    with torch.no_grad():
        top = wrapper.net(prompt)[0, -1].topk(2).indices.tolist()
    beams = wrapper.beam_search(
        prompt,
        1,
        beams=4,
        stochastic=True,
        filter_logits_fn="top_k",
        filter_kwargs={"k": 2},
        return_beams_and_scores=True,
        generator=torch.Generator().manual_seed(0),
    )
    first_tokens = {b for b, s in zip(beams[0][:, 0, 0].tolist(), beams[1][:, 0]) if s > -1e30}
    assert first_tokens <= set(top)


def test_cross_attention_context_follows_the_beams() -> None:
    wrapper = model(vocab=10, cross_attend=True)
    context = torch.randn(2, 5, 16, dtype=torch.double)
    both = wrapper.beam_search(torch.tensor([[1], [2]]), 4, beams=3, context=context)
    for row in range(2):
        one = wrapper.beam_search(
            torch.tensor([[row + 1]]), 4, beams=3, context=context[row : row + 1]
        )
        assert torch.equal(both[row], one[0])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"beams": 0}, ValueError, "'beams' must be >= 1"),
        ({"filter_logits_fn": "top_k"}, ValueError, "stochastic=True"),
        ({"temperature": -1.0}, ValueError, "'temperature' must be >= 0"),
        ({"eos_token": 99}, ValueError, "'eos_token' must be a token id"),
        ({"mask": torch.ones(1, 2, dtype=torch.bool)}, TypeError, "cannot be passed here"),
    ],
)
def test_bad_arguments(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        model().beam_search(torch.tensor([[1, 2]]), 3, **kwargs)


def test_gumbel_top_one_samples_the_tempered_softmax() -> None:
    """Gumbel-max: argmax(logits / T + Gumbel noise) is distributed as softmax(logits / T)."""
    from x_attn.wrappers.beam import BeamProposer

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]], dtype=torch.float64).expand(40000, -1)
    proposer = BeamProposer(1, 2.0, True, None, {}, torch.Generator().manual_seed(0))
    tokens, _ = proposer(logits, logits.log_softmax(-1))
    freq = torch.bincount(tokens[:, 0], minlength=4).double() / tokens.shape[0]
    torch.testing.assert_close(freq, (logits[0] / 2.0).softmax(-1), rtol=0, atol=0.01)


def test_same_beams_and_scores_as_x_transformers() -> None:
    xt = pytest.importorskip("x_transformers")
    from xt_pairs import token_pair

    layers = dict(dim=16, depth=2, heads=2, attn_dim_head=8)
    mine, theirs = token_pair("Decoder", 0.5, num_tokens=12, max_seq_len=32, layers=layers)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    a = AutoregressiveWrapper(mine).beam_search(prompt, 5, beams=3, return_beams_and_scores=True)
    b = xt.AutoregressiveWrapper(theirs).beam_search(
        prompt, 5, beams=3, return_beams_and_scores=True
    )
    assert torch.equal(a[0], b[0])
    torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-5)
