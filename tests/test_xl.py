"""Transformer-XL recurrence: mems, XLAutoregressiveWrapper training and generation.

Invariant: with relative positions and a memory that covers the whole sequence, running it
segment by segment with mems gives the logits of one causal pass (float64, 1e-9), for every
registered flag. References written here: the loss as an explicit -log softmax average, greedy
decoding as an argmax loop over full forwards, mems of layer 0 as the token embeddings.

Shape legend: b batch, n sequence, s segment length, m memory length, d model dim, v vocabulary.
"""

from __future__ import annotations

import flag_models
import pytest
import torch
from flag_models import DIM, DIMS, tokens
from torch import Tensor

from x_attn import Decoder
from x_attn.registry import FLAGS, FlagCase, flag_case
from x_attn.wrappers.xl import XLAutoregressiveWrapper

NAMES = [case.name for case in FLAGS if case.causal_ok]
# refused with max_mem_len, and the flag the refusal names: the two-stream update keeps no
# per-layer hidden state; MTA's query convolution reads query rows that mems do not give; a
# shifted feed-forward needs its own earlier inputs, which mems do not hold
MEMS_REFUSED = {
    "reversible": "reversible=True",
    "attn_mta": "attn_mta",
    "attn_mta_post_conv": "attn_mta",
    "attn_mta_post_head_mix": "attn_mta",
    "shift_tokens": "shift_tokens",
    "attn_lsh": "attn_lsh",
    "attn_linformer": "attn_linformer",
    "mv_split_residual": "mv_split_residual",
    "reinject_input": "reinject_input",
    "recycling": "recycling",
    "looped": "looped",
}
ATOL = 1e-9


def test_registry_says_which_flags_refuse_mems() -> None:
    assert set(MEMS_REFUSED) == {case.name for case in FLAGS if not case.mems_ok}


def build(case: FlagCase, max_seq_len: int = 6, max_mem_len: int = 64, **extra):
    """Tiny float64 eval Decoder with relative positions (rotary unless the case has its own)."""
    return flag_models.build(
        case, max_seq_len=max_seq_len, relative=True, max_mem_len=max_mem_len, **extra
    )


def run_segments(net, x: Tensor, sizes: tuple[int, ...]) -> tuple[Tensor, list[Tensor]]:
    mems, outs, start = None, [], 0
    for size in sizes:
        out, mems = net(x[:, start : start + size], mems=mems, return_mems=True)
        outs.append(out)
        start += size
    return torch.cat(outs, dim=1), mems


@pytest.mark.parametrize("name", NAMES)
def test_segments_with_mems_equal_one_causal_pass(name: str) -> None:
    if name in MEMS_REFUSED:  # refused when the wrapper is built, naming both flags
        with pytest.raises(ValueError, match=f"max_mem_len.*{MEMS_REFUSED[name]}"):
            build(flag_case(name))
        return
    net, x = build(flag_case(name)), tokens(2, 13)
    with torch.no_grad():
        segmented, mems = run_segments(net, x, (5, 5, 3))
        full = net(x)
    torch.testing.assert_close(segmented, full, atol=ATOL, rtol=0)
    assert len(mems) == net.attn_layers.num_self_attention_layers
    assert mems[0].shape == (2, 13 + net.num_memory_tokens, DIM)


def test_mems_are_detached_capped_layer_inputs() -> None:
    net = build(flag_case("rotary_pos_emb"), max_mem_len=6).train()
    x = tokens(2, 12)
    _, mems = run_segments(net, x, (4, 4, 4))
    assert len(mems) == 2 and all(m.shape == (2, 6, DIM) for m in mems)
    assert not any(m.requires_grad for m in mems)
    # layer 0 input = token embeddings (relative positions only, no embedding dropout)
    torch.testing.assert_close(mems[0], net.token_emb.weight[x[:, -6:]].detach(), atol=0, rtol=0)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda mems: mems[:1], "list of 2 tensors"),
        (lambda mems: mems[0], "list of 2 tensors"),
        (lambda mems: [m[..., :8] for m in mems], "dim=16"),
        (lambda mems: [m[:1] for m in mems], "batch=2"),
        (lambda mems: [mems[0], mems[1][:, :2]], "one mem_len"),
    ],
)
def test_wrong_mems_raise(mutate, match: str) -> None:
    net = build(flag_case("rel_pos_bias"))
    _, mems = net(tokens(2, 4), return_mems=True)
    with pytest.raises(ValueError, match=match):
        net(tokens(2, 4), mems=mutate(mems))


def test_mems_from_another_model_raise() -> None:
    other = build(flag_case("rel_pos_bias"), depth=3)
    _, mems = other(tokens(2, 4), return_mems=True)
    with pytest.raises(ValueError, match="'mems' must be a list of 2 tensors"):
        build(flag_case("rel_pos_bias"))(tokens(2, 4), mems=mems)
    with pytest.raises(ValueError, match="'mems'"):
        XLAutoregressiveWrapper(build(flag_case("rel_pos_bias"))).generate(
            tokens(2, 3), 2, mems=mems
        )


@pytest.mark.parametrize("name", ["rotary_pos_emb", "rel_pos_bias", "alibi_pos_bias"])
def test_xl_loss_equals_one_pass_cross_entropy(name: str) -> None:
    net = build(flag_case(name))
    xl = XLAutoregressiveWrapper(net, ignore_index=3)
    x = tokens(2, 20)
    with torch.no_grad():
        log_probs = net(x[:, :-1]).log_softmax(dim=-1)
    target = x[:, 1:]
    terms = [
        -log_probs[b, t, target[b, t]] for b in range(2) for t in range(19) if target[b, t] != 3
    ]
    loss, mems = xl(x, return_mems=True)
    torch.testing.assert_close(loss, torch.stack(terms).mean(), atol=ATOL, rtol=0)
    assert mems[0].shape == (2, 19, DIM)
    loss.backward()
    assert net.token_emb.weight.grad is not None and net.token_emb.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["rotary_pos_emb", "alibi_pos_bias", "num_memory_tokens"])
def test_xl_generate_equals_full_context_greedy(name: str) -> None:
    """Prompt of 1.5 segments, 10 new tokens: the mems cover everything, as one causal pass."""
    net = build(flag_case(name))
    prompt = tokens(2, 9)
    out = XLAutoregressiveWrapper(net).generate(prompt, 10, temperature=0.0)
    seq = prompt
    with torch.no_grad():
        for _ in range(10):
            seq = torch.cat((seq, net(seq)[:, -1].argmax(dim=-1, keepdim=True)), dim=1)
    assert torch.equal(out, seq[:, 9:])


def test_xl_generate_stops_at_eos_and_continues_from_mems() -> None:
    net = build(flag_case("rotary_pos_emb"))
    xl = XLAutoregressiveWrapper(net, pad_value=0)
    prompt = tokens(2, 4)
    free = xl.generate(prompt, 8, temperature=0.0)
    eos = int(free[0, 2])
    stopped = xl.generate(prompt, 8, temperature=0.0, eos_token=eos)
    end = int((free[0] == eos).nonzero()[0]) + 1
    assert torch.equal(stopped[0, :end], free[0, :end]) and bool((stopped[0, end:] == 0).all())
    # continuing from mems of the first 4 tokens = prompting with all 7 tokens
    head, tail = tokens(2, 7)[:, :4], tokens(2, 7)[:, 4:]
    _, mems = net(head, return_mems=True)
    assert torch.equal(
        xl.generate(tail, 5, temperature=0.0, mems=mems),
        xl.generate(tokens(2, 7), 5, temperature=0.0),
    )


def test_xl_bad_input_raises() -> None:
    xl = XLAutoregressiveWrapper(build(flag_case("rotary_pos_emb")))
    with pytest.raises(ValueError, match="different lengths"):
        xl.generate([torch.tensor([1, 2]), torch.tensor([3])], 4)
    with pytest.raises(ValueError, match="'temperature' must be >= 0"):
        xl.generate(tokens(1, 3), 4, temperature=-1.0)
    with pytest.raises(ValueError, match="'seq_len' must be >= 1"):
        xl.generate(tokens(1, 3), 0)
    with pytest.raises(ValueError, match="'x' must be a"):
        xl(tokens(2, 1))
    with pytest.raises(TypeError, match="'mask'"):
        xl(tokens(2, 5), mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="max_mem_len"):
        XLAutoregressiveWrapper(torch.nn.Linear(2, 2))


def test_continuous_wrapper_mems_equal_one_pass() -> None:
    continuous = pytest.importorskip("x_attn.wrappers.continuous")
    torch.manual_seed(0)
    net = continuous.ContinuousTransformerWrapper(
        max_seq_len=4,
        max_mem_len=32,
        dim_in=5,
        dim_out=3,
        attn_layers=Decoder(**DIMS, alibi_pos_bias=True),
    ).double()
    net.eval()
    x = torch.randn(2, 10, 5, dtype=torch.float64)
    with torch.no_grad():
        segmented, mems = run_segments(net, x, (4, 4, 2))
        full = net(x)
    torch.testing.assert_close(segmented, full, atol=ATOL, rtol=0)
    assert len(mems) == 2 and mems[0].shape == (2, 10, DIM)
