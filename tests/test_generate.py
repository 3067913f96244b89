"""AutoregressiveWrapper: next-token loss, sampling, eos, mixed-length prompts, bad input.

References written here: the loss as an explicit -log softmax average, greedy decoding as an
argmax loop over full forwards, sampling frequencies from hand-computed softmax / entmax-1.5
probabilities (on a stub model with fixed logits), eos handling on a stub that counts.

Shape legend: b batch, n sequence, p prompt length, j context length, d model dim,
v vocabulary.
"""

from __future__ import annotations

import math

import pytest
import torch
from flag_models import DIM, VOCAB, build, tokens
from torch import Tensor, nn

from x_attn.registry import FLAGS, flag_case
from x_attn.wrappers.autoregressive import AutoregressiveWrapper

NAMES = [case.name for case in FLAGS if case.causal_ok]
# flags anchored at absolute slots: left padding is refused (the error names this)
SLOT_ANCHORED = {"attn_global_tokens": "attn_global_tokens", "attn_sparse_summary": "fixed"}


def greedy_reference(net: nn.Module, prompt: Tensor, steps: int, **kwargs) -> Tensor:
    """Argmax of a full forward over the whole sequence, one token at a time."""
    seq = prompt
    with torch.no_grad():
        for _ in range(steps):
            nxt = net(seq, **kwargs)[:, -1].argmax(dim=-1, keepdim=True)
            seq = torch.cat((seq, nxt), dim=1)
    return seq[:, prompt.shape[1] :]


class FixedLogits(nn.Module):
    """Stub model: the same next-token logits at every position."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float64)
        self.max_seq_len, self.num_tokens = 64, len(logits)

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        return self.logits.expand(*x.shape, -1)


class CountUp(nn.Module):
    """Stub model: after token t it predicts t + 1 (mod vocab)."""

    max_seq_len, num_tokens = 64, 10

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        return 10.0 * nn.functional.one_hot((x + 1) % 10, 10).double()


# ------------------------------------------------------------------------------------------------
# training loss


def test_loss_is_mean_next_token_cross_entropy() -> None:
    net = build(flag_case("default"))
    ar = AutoregressiveWrapper(net, ignore_index=7)  # a real token id, as with a pad token
    x = tokens(2, 9)
    x[0, 3] = x[1, 6] = 7
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 0] = False
    with torch.no_grad():
        log_probs = net(x[:, :-1], mask=mask[:, :-1]).log_softmax(dim=-1)
        loss = ar(x, mask=mask)
    target = x[:, 1:]
    terms = [
        -log_probs[b, t, target[b, t]] for b in range(2) for t in range(8) if target[b, t] != 7
    ]
    assert len(terms) <= 14
    torch.testing.assert_close(loss, torch.stack(terms).mean(), atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------------------------
# sampling


def test_greedy_is_the_argmax_loop() -> None:
    net = build(flag_case("rotary_pos_emb"))
    prompt = tokens(2, 4)
    expected = greedy_reference(net, prompt, 8)
    assert torch.equal(AutoregressiveWrapper(net).generate(prompt, 8, temperature=0.0), expected)


@pytest.mark.parametrize(
    "fn, kwargs",
    [
        ("top_k", {"k": 1}),
        ("top_p", {"thres": 0.0}),
        ("min_p", {"min_p": 1.0}),
        ("top_a", {"min_p_pow": 1.0, "min_p_ratio": 1.0}),
    ],
)
def test_filters_that_keep_only_the_top_token_are_greedy(fn: str, kwargs: dict) -> None:
    net = build(flag_case("default"))
    ar, prompt = AutoregressiveWrapper(net), tokens(2, 3)
    sampled = ar.generate(prompt, 6, temperature=1.0, filter_logits_fn=fn, filter_kwargs=kwargs)
    assert torch.equal(sampled, greedy_reference(net, prompt, 6))


def test_temperature_sharpens_softmax_sampling() -> None:
    """p = (0.7, 0.3): temperature 1 draws token 0 w.p. 0.7, temperature 0.5 w.p. 0.49 / 0.58."""
    ar = AutoregressiveWrapper(FixedLogits([math.log(0.7), math.log(0.3)]))
    prompts = torch.zeros(4000, 1, dtype=torch.long)
    for temperature, p0 in ((1.0, 0.7), (0.5, 0.49 / 0.58)):
        gen = torch.Generator().manual_seed(0)
        out = ar.generate(
            prompts,
            1,
            temperature=temperature,
            filter_logits_fn=None,
            cache_kv=False,
            generator=gen,
        )
        assert abs((out == 0).double().mean().item() - p0) < 0.03


def test_entmax_sampling_draws_from_entmax15_support() -> None:
    """entmax-1.5 of z = (1, 0.5, -1 x 30): p_i = (z_i / 2 - tau)_+^2 with sum 1.

    Two tokens are in the support: (0.5 - tau)^2 + (0.25 - tau)^2 = 1 gives
    tau = (1.5 - sqrt(7.75)) / 4; the 30 others have z / 2 = -0.5 < tau, probability 0,
    although softmax would give them about 80% of the mass.
    """
    z = [1.0, 0.5] + [-1.0] * 30
    tau = (1.5 - math.sqrt(7.75)) / 4
    p0 = (0.5 - tau) ** 2
    assert abs(p0 + (0.25 - tau) ** 2 - 1) < 1e-12
    ar = AutoregressiveWrapper(FixedLogits(z))
    prompts = torch.zeros(4000, 1, dtype=torch.long)
    common = dict(filter_logits_fn=None, cache_kv=False)
    out = ar.generate(
        prompts, 1, entmax_alpha=1.5, generator=torch.Generator().manual_seed(0), **common
    )
    assert set(out.flatten().tolist()) == {0, 1}
    assert abs((out == 0).double().mean().item() - p0) < 0.03
    soft = ar.generate(prompts, 1, generator=torch.Generator().manual_seed(0), **common)
    assert (soft >= 2).double().mean().item() > 0.7


# ------------------------------------------------------------------------------------------------
# eos, prompts of different lengths, long generation


def test_eos_stops_each_row_and_pads_after() -> None:
    ar = AutoregressiveWrapper(CountUp(), pad_value=9)
    out = ar.generate(torch.tensor([[3], [0]]), 10, eos_token=5, temperature=0.0, cache_kv=False)
    assert out.tolist() == [[4, 5, 9, 9, 9], [1, 2, 3, 4, 5]]  # stops once every row is done


def test_eos_on_a_real_model_keeps_tokens_up_to_eos() -> None:
    ar = AutoregressiveWrapper(build(flag_case("rel_pos_bias")))
    prompts = [tokens(1, 2, seed=2)[0], tokens(1, 5, seed=3)[0]]
    free = ar.generate(prompts, 12, temperature=0.0)
    eos = int(free[0, 3])
    stopped = ar.generate(prompts, 12, temperature=0.0, eos_token=eos)
    assert torch.equal(
        stopped, ar.generate(prompts, 12, temperature=0.0, eos_token=eos, cache_kv=False)
    )
    for row in range(2):
        hits = (free[row] == eos).nonzero()
        end = int(hits[0]) + 1 if len(hits) else free.shape[1]
        assert torch.equal(stopped[row, :end], free[row, :end])
        assert bool((stopped[row, end:] == ar.pad_value).all())


@pytest.mark.filterwarnings("ignore:.*without the KV cache:RuntimeWarning")
@pytest.mark.parametrize("name", NAMES)
def test_prompts_of_different_lengths_match_generating_each_alone(name: str) -> None:
    ar = AutoregressiveWrapper(build(flag_case(name)))
    prompts = [tokens(1, n, seed=n)[0] for n in (2, 5, 3)]
    if name in SLOT_ANCHORED:  # absolute positions would shift in padded rows
        with pytest.raises(ValueError, match=SLOT_ANCHORED[name]):
            ar.generate(prompts, 6, temperature=0.0, cache_kv=False)
        return
    batch = ar.generate(prompts, 6, temperature=0.0, cache_kv=False)  # the uncached path
    for row, p in enumerate(prompts):
        assert torch.equal(batch[row], ar.generate(p, 6, temperature=0.0))


def test_prompt_lens_tensor_equals_list() -> None:
    ar = AutoregressiveWrapper(build(flag_case("default")))
    right_padded = torch.tensor([[5, 6, 0, 0], [1, 2, 3, 4]])
    lens = torch.tensor([2, 4])
    as_list = [torch.tensor([5, 6]), torch.tensor([1, 2, 3, 4])]
    assert torch.equal(
        ar.generate(right_padded, 5, temperature=0.0, prompt_lens=lens),
        ar.generate(as_list, 5, temperature=0.0),
    )


def test_generation_past_max_seq_len_with_relative_positions() -> None:
    """Past max_seq_len every query sees the newest max_seq_len positions (a sliding window)."""
    window = 6
    short = build(flag_case("rotary_pos_emb"), max_seq_len=window)
    long = build(flag_case("rotary_pos_emb"), max_seq_len=64)
    prompt = tokens(2, 4)
    out = AutoregressiveWrapper(short).generate(prompt, 14, temperature=0.0)
    pos = torch.arange(4 + 14)
    band = (pos.unsqueeze(-1) - pos) < window  # query i sees key j iff i - j < window
    seq = prompt
    with torch.no_grad():
        for _ in range(14):
            n = seq.shape[1]
            nxt = short(seq, attn_mask=band[:n, :n])[:, -1].argmax(dim=-1, keepdim=True)
            seq = torch.cat((seq, nxt), dim=1)
    assert torch.equal(out, seq[:, 4:])
    # until the window is full nothing is cut: same tokens as with room to spare
    free = AutoregressiveWrapper(long).generate(prompt, 14, temperature=0.0)
    assert torch.equal(out[:, : window - 4 + 1], free[:, : window - 4 + 1])
    assert not torch.equal(out, free)  # ... and afterwards the window matters


def test_absolute_positions_refuse_generation_past_max_seq_len() -> None:
    ar = AutoregressiveWrapper(build(flag_case("default"), max_seq_len=8))
    prompt = tokens(1, 3)
    assert ar.generate(prompt, 6, temperature=0.0).shape == (1, 6)  # 3 + 6 - 1 = 8 positions
    with pytest.raises(ValueError, match=r"max_seq_len=8.*at most 6.*rotary_pos_emb"):
        ar.generate(prompt, 7, temperature=0.0)
    with pytest.raises(ValueError, match="prompt has 9 tokens"):
        ar.generate(tokens(1, 9), 1)


# ------------------------------------------------------------------------------------------------
# pass-through to the model, modes


def test_context_is_passed_through_to_cross_attention() -> None:
    net = build(flag_case("default"), cross_attend=True)
    torch.manual_seed(1)
    context = torch.randn(2, 5, DIM, dtype=torch.float64)
    context_mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    start = tokens(2, 1)
    out = AutoregressiveWrapper(net).generate(
        start, 6, context=context, context_mask=context_mask, temperature=0.0
    )
    expected = greedy_reference(net, start, 6, context=context, context_mask=context_mask)
    assert torch.equal(out, expected)
    loss = AutoregressiveWrapper(net)(tokens(2, 4), context=context, context_mask=context_mask)
    assert torch.isfinite(loss)


def test_generate_restores_training_mode_and_squeezes_1d_prompts() -> None:
    net = build(flag_case("default")).train()
    ar = AutoregressiveWrapper(net)
    out = ar.generate(tokens(1, 3)[0], 4, temperature=0.0)
    assert out.shape == (4,) and net.training
    assert torch.equal(out, ar.generate(tokens(1, 3), 4, temperature=0.0)[0])


# ------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(temperature=-0.5), ValueError, "'temperature' must be >= 0"),
        (dict(filter_logits_fn="top_q"), ValueError, "'top_k', 'top_p', 'min_p', 'top_a'"),
        (dict(seq_len=0), ValueError, "'seq_len' must be >= 1"),
        (dict(eos_token=VOCAB), ValueError, "'eos_token' must be a token id"),
        (dict(entmax_alpha=1.0), ValueError, "'entmax_alpha' must be > 1"),
        # mask is the 2021 prompt mask (x_attn.wrappers.legacy_generate): checked, not reserved
        (dict(mask=torch.ones(2, 4, dtype=torch.bool)), ValueError, "'mask' must be a bool"),
        (dict(attn_mask=torch.ones(3, 3, dtype=torch.bool)), TypeError, "'attn_mask'"),
        (dict(prompt_lens=torch.tensor([0, 3])), ValueError, "'prompt_lens' must lie in"),
        (dict(prompt_lens=torch.tensor([4, 3]), eos_token=1), ValueError, "'prompt_lens'"),
        (
            dict(prompts=[torch.tensor([1, 2]), torch.tensor([], dtype=torch.long)], eos_token=1),
            ValueError,
            r"'prompts\[1\]' must be a non-empty",
        ),
        (dict(prompts=torch.rand(2, 3)), TypeError, "integer token ids"),
    ],
)
def test_bad_generate_arguments_raise(kwargs: dict, error: type, match: str) -> None:
    ar = AutoregressiveWrapper(build(flag_case("default")))
    args = dict(prompts=tokens(2, 3), seq_len=4)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ar.generate(args.pop("prompts"), args.pop("seq_len"), **args)


def test_bad_wrapper_arguments_raise() -> None:
    with pytest.raises(TypeError, match="'net'"):
        AutoregressiveWrapper(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="'pad_value'"):
        AutoregressiveWrapper(build(flag_case("default")), pad_value=VOCAB)
    with pytest.raises(ValueError, match="'x' must have shape"):
        AutoregressiveWrapper(build(flag_case("default")))(tokens(2, 1))
