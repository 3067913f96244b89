"""Looped language model (``looped=True``, arXiv 2510.25741).

Checked against the stack applied by hand T times (float64), the exit rule and the training
loss written out naively here, cached decoding against the full forward run by run (with
tokens exiting at different runs), and the refusals.

Shape legend: b batch, n sequence, d model dim, t runs, v vocabulary.
"""

from __future__ import annotations

import math

import pytest
import torch
from xt_pairs import xt_pair

from x_attn import AutoregressiveWrapper, Decoder, TransformerWrapper

V, D = 23, 16


def looped_model(seed: int = 0, gate_scale: float = 3.0, **kw) -> TransformerWrapper:
    """A float64 eval model whose exit gates vary a lot between tokens and runs."""
    torch.manual_seed(seed)
    layers = Decoder(dim=D, depth=2, heads=2, pre_and_post_norm=True, rotary_pos_emb=True)
    model = TransformerWrapper(
        num_tokens=V, max_seq_len=32, looped=True, use_abs_pos_emb=False, attn_layers=layers, **kw
    ).double()
    with torch.no_grad():
        model.exit_gate.weight.normal_(0, gate_scale)
    return model.eval()


def by_hand(model: TransformerWrapper, toks: torch.Tensor, steps: int):
    """Per run: (hidden, logits, exit logit), the stack applied ``steps`` times by hand."""
    h, runs = model.token_emb.weight[toks], []
    for _ in range(steps):
        h = model.attn_layers(h)
        runs.append((h, model.to_logits(h), h @ model.exit_gate.weight.T))
    return runs


@torch.no_grad()
@pytest.mark.parametrize("steps", [1, 2, 3, 5])
def test_looping_equals_the_stack_applied_by_hand(steps):
    model = looped_model()
    toks = torch.randint(0, V, (2, 7))
    logits, inter = model(
        toks, looped_steps=steps, looped_pred_all_logits=True, return_intermediates=True
    )
    runs = by_hand(model, toks, steps)
    torch.testing.assert_close(logits, runs[-1][1], atol=1e-12, rtol=0)
    assert len(inter.all_pred_logits) == len(inter.exit_logits) == steps
    for (_, run_logits, gate), got, got_gate in zip(
        runs, inter.all_pred_logits, inter.exit_logits, strict=True
    ):
        torch.testing.assert_close(got, run_logits, atol=1e-12, rtol=0)
        torch.testing.assert_close(got_gate, gate, atol=1e-12, rtol=0)
    assert (inter.exit_indices == steps - 1).all()
    if steps > 1:  # the loop is not the identity
        assert (runs[0][1] - runs[-1][1]).abs().max() > 1e-3


def naive_exit(gates: list[float], threshold: float) -> int:
    """First run whose cumulative exit probability reaches the threshold, else the last."""
    cumulative, stay = 0.0, 1.0
    for t, g in enumerate(gates[:-1]):
        lam = 1 / (1 + math.exp(-g))
        cumulative += stay * lam
        stay *= 1 - lam
        if cumulative >= threshold:
            return t
    return len(gates) - 1


@torch.no_grad()
def test_early_exit_follows_the_cumulative_exit_probability():
    model = looped_model()
    toks = torch.randint(0, V, (2, 9))
    threshold = 0.6
    logits, inter = model(
        toks,
        max_looped_steps=4,
        looped_inference=True,
        looped_exit_prob_threshold=threshold,
        return_intermediates=True,
    )
    runs = by_hand(model, toks, 4)
    exits = torch.zeros(2, 9, dtype=torch.long)
    for b in range(2):
        for i in range(9):
            t = naive_exit([float(r[2][b, i, 0]) for r in runs], threshold)
            exits[b, i] = t
            torch.testing.assert_close(logits[b, i], runs[t][1][b, i], atol=1e-12, rtol=0)
    assert torch.equal(inter.exit_indices, exits)
    assert len(set(exits.flatten().tolist())) > 1  # tokens left at different runs


@torch.no_grad()
@pytest.mark.parametrize("inference", [False, True], ids=["fixed", "early-exit"])
def test_cached_decoding_equals_the_full_forward_run_by_run(inference):
    model = looped_model()
    toks = torch.randint(0, V, (2, 10))
    opts = dict(looped_inference=inference, looped_exit_prob_threshold=0.6)
    opts["looped_pred_all_logits"] = True
    full, full_inter = model(toks, return_intermediates=True, **opts)
    logits, cache = model(toks[:, :4], return_intermediates=True, **opts)
    steps = [logits]
    for t in range(4, 10):
        logits, cache = model(toks[:, : t + 1], cache=cache, return_intermediates=True, **opts)
        steps.append(logits)
        for run_full, run_step in zip(full_inter.all_pred_logits, cache.all_pred_logits):
            torch.testing.assert_close(run_step[:, -1], run_full[:, t], atol=1e-10, rtol=0)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-10, rtol=0)
    assert torch.equal(cache.exit_indices, full_inter.exit_indices)
    assert len(cache.looped_prompt_kv_cache) == 4  # one cache per run


def test_training_loss_equals_the_loss_written_out():
    model = looped_model(gate_scale=0.5)
    wrapper = AutoregressiveWrapper(
        model, looped_loss_slope=5.0, looped_loss_threshold_exit=0.1, looped_exit_loss_weight=0.7
    )
    seq = torch.randint(1, V, (2, 8))
    lens = torch.tensor([8, 6])  # row 1: positions 6, 7 are padding
    loss = wrapper(seq, lens=lens)
    loss.backward()
    assert model.exit_gate.weight.grad.abs().sum() > 0  # the gate learns from the exit loss
    inp, target = seq[:, :-1].clone(), seq[:, 1:].clone()
    inp[1, 6:] = 0  # pad_value
    target[1, 5:] = -100  # ignore_index: targets at padded positions
    with torch.no_grad():
        expected = _naive(model, inp, target, 5.0, 0.1, 0.7)
    assert math.isclose(loss.item(), expected, rel_tol=1e-9), (loss.item(), expected)


def _naive(model, inp, target, slope, gamma, weight):
    """The loss written out with loops over tokens and runs (float64): per run the token's
    cross-entropy weighted by the exit distribution, plus the gates' cross-entropy."""
    runs = by_hand(model, inp, 4)
    total, count, bce, bce_count = 0.0, 0, 0.0, 0
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    for b in range(inp.shape[0]):
        for i in range(inp.shape[1]):
            y = int(target[b, i])
            if y == -100:
                continue
            losses = [float(-r[1][b, i].log_softmax(-1)[y]) for r in runs]
            gates = [float(r[2][b, i, 0]) for r in runs]
            stay = 1.0
            for t in range(4):
                p = stay * sig(gates[t]) if t < 3 else stay
                stay *= 1 - sig(gates[t])
                total += p * losses[t]
                count += 1
            for t in range(3):
                q = sig(slope * (losses[t + 1] - losses[t] + gamma))
                bce -= q * math.log(sig(gates[t])) + (1 - q) * math.log(1 - sig(gates[t]))
                bce_count += 1
    return total / count + weight * bce / bce_count


def test_refusals_name_the_reason():
    plain = Decoder(dim=D, depth=1)
    with pytest.raises(ValueError, match="pre_and_post_norm"):
        TransformerWrapper(num_tokens=V, max_seq_len=8, looped=True, attn_layers=plain)
    model = TransformerWrapper(num_tokens=V, max_seq_len=8, attn_layers=plain)
    with pytest.raises(ValueError, match="looped_steps need"):
        model(torch.randint(0, V, (1, 4)), looped_steps=2)
    looped = looped_model()
    toks = torch.randint(0, V, (1, 5))
    _, cache = looped(toks[:, :3], looped_steps=3, return_intermediates=True)
    with pytest.raises(ValueError, match="holds 3 runs"):
        looped(toks, cache=cache, return_intermediates=True)
    with pytest.raises(ValueError, match="max_looped_steps"):
        looped(toks, max_looped_steps=0)


def test_forward_and_loss_equal_x_transformers():
    def build(lib):
        layers = lib.Decoder(dim=D, depth=2, heads=2, attn_dim_head=8, pre_and_post_norm=True)
        return lib.TransformerWrapper(num_tokens=V, max_seq_len=12, looped=True, attn_layers=layers)

    theirs, ours = xt_pair(build)
    import x_transformers as xt

    seq = torch.randint(0, V, (2, 9))
    opts = dict(return_intermediates=True, looped_pred_all_logits=True)
    with torch.no_grad():
        expected, their_inter = theirs(seq, **opts)
        got, inter = ours(seq, **opts)
        their_loss = xt.AutoregressiveWrapper(theirs, looped_loss_slope=5.0)(seq)
        loss = AutoregressiveWrapper(ours, looped_loss_slope=5.0)(seq)
    # x-transformers takes its softmax in float32 (1e-6, as tests/test_attn_flags_vs_...)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    for mine, their in zip(inter.exit_logits, their_inter.exit_logits, strict=True):
        torch.testing.assert_close(mine, their, atol=1e-6, rtol=0)
    torch.testing.assert_close(loss, their_loss, atol=1e-6, rtol=0)


@torch.no_grad()
def test_greedy_generation_equals_full_forwards_and_reports_exits():
    model = looped_model()
    wrapper = AutoregressiveWrapper(model)
    prompt = torch.randint(0, V, (1, 4))
    out, inter = wrapper.generate(
        prompt, 5, temperature=0.0, looped_exit_prob_threshold=0.6, return_intermediates=True
    )
    seq = prompt
    for _ in range(5):  # full forwards with looped inference, argmax of the last position
        logits = model(seq, looped_inference=True, looped_exit_prob_threshold=0.6)
        seq = torch.cat((seq, logits[:, -1:].argmax(-1)), dim=1)
    assert torch.equal(out, seq[:, 4:])
    _, full = model(
        seq[:, :-1],
        looped_inference=True,
        looped_exit_prob_threshold=0.6,
        return_intermediates=True,
    )
    assert torch.equal(inter.exit_indices, full.exit_indices)  # every token fed so far
    assert len(inter.looped_prompt_kv_cache) == 4
