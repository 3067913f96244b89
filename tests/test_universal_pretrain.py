"""UniversalPretrainWrapper and its random programs (arXiv 2506.20057).

References: greedy generation replayed by recomputing the whole prefix at every step (no
recurrent state carried), the buffer update checked row by row against the program's output,
the loss written out as the next-token cross-entropy of the rows drawn under the same random
stream; invariants: the program is never trained, untouched rows stay as they were.

Shape legend: b batch, n sequence, s seed length, B buffer rows.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from x_attn import Decoder, TransformerWrapper, UniversalPretrainWrapper
from x_attn.wrappers.synthetic_data import SyntheticDataGenerator, random_sequences

V = 11


def model(max_seq_len: int = 32) -> TransformerWrapper:
    torch.manual_seed(0)
    return TransformerWrapper(
        num_tokens=V, max_seq_len=max_seq_len, attn_layers=Decoder(dim=16, depth=1, heads=2)
    )


def wrapper(**kw) -> UniversalPretrainWrapper:
    kw = {"seq_len": 9, "batch_size": 3, "buffer_size": 12, "num_reset": 2, "seed_length": 2, **kw}
    return UniversalPretrainWrapper(model(), **kw)


def test_random_sequences_are_uniform_rows_then_constant_rows():
    out = random_sequences(V, 50, 3, 2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (5, 50) and ((out >= 0) & (out < V)).all()
    assert (out[3:] == out[3:, :1]).all()
    assert all(len(set(row.tolist())) > 1 for row in out[:3])


@pytest.mark.parametrize("use_gru", [False, True])
def test_greedy_generation_equals_recomputing_the_prefix(use_gru):
    torch.manual_seed(0)
    program = SyntheticDataGenerator(8, V, max_seq_len=16, use_gru=use_gru)
    with torch.no_grad():  # larger weights: a program whose output depends on its input
        for p in program.parameters():
            p.mul_(4)
    condition, seed = torch.randint(0, V, (2, 5)), torch.randint(0, V, (2, 3))
    out = program.generate(10, seed, condition)
    others = [program.generate(10, seed, torch.randint(0, V, (2, 5))) for _ in range(8)]
    assert any(not torch.equal(out, other) for other in others)  # the condition matters
    seq = seed
    while seq.shape[1] < 10:  # whole prefix each step, no recurrent state carried
        logits, _ = program(torch.cat((condition, seq), dim=1))
        seq = torch.cat((seq, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    torch.testing.assert_close(out, seq)


def test_enrich_replaces_the_chosen_rows_with_the_program_output():
    up = wrapper(num_reset=0)
    before = up.synth_data_buffer.clone()
    rows, seed = up.enrich_()
    after = up.synth_data_buffer
    expected = up.data_generator.generate(9, seed, before[rows])
    torch.testing.assert_close(after[rows], expected)
    others = torch.ones(12, dtype=torch.bool)
    others[rows] = False
    torch.testing.assert_close(after[others], before[others])
    assert (after[rows, :2] == seed).all()


def test_reset_rows_get_fresh_noise():
    up = wrapper(num_reset=4, batch_size=1)
    before = up.synth_data_buffer.clone()
    rows, _ = up.enrich_()
    changed = (up.synth_data_buffer != before).any(-1)
    changed[rows] = False
    assert 0 < int(changed.sum()) <= 4


def test_loss_is_next_token_cross_entropy_of_buffer_rows():
    up = wrapper()
    twin = copy.deepcopy(up)
    torch.manual_seed(3)
    loss = up()
    torch.manual_seed(3)
    twin.enrich_()
    batch = twin.get_rand_sequences_from_buffer()
    net = twin.ar_wrapper.net
    ref = F.cross_entropy(net(batch[:, :-1]).transpose(1, 2), batch[:, 1:])
    torch.testing.assert_close(loss, ref)


def test_model_is_trained_and_the_program_is_not():
    up = wrapper()
    up().backward()
    assert all(p.grad is not None for p in up.ar_wrapper.parameters())
    assert all(not p.requires_grad for p in up.data_generator.parameters())


def test_program_weights_are_redrawn_every_k_steps():
    up = wrapper(reset_turing_machine_every=2)
    w0 = up.data_generator.to_logits.weight.clone()
    up.enrich_()
    assert torch.equal(up.data_generator.to_logits.weight, w0)
    up.enrich_()
    assert not torch.equal(up.data_generator.to_logits.weight, w0)


@pytest.mark.parametrize("on_cpu", [False, True])
def test_keep_buffer_on_cpu_keeps_it_out_of_the_state(on_cpu):
    up = wrapper(keep_buffer_on_cpu=on_cpu)
    assert ("synth_data_buffer" in up.state_dict()) is not on_cpu
    assert up.synth_data_buffer.shape == (12, 9)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"batch_size": 20}, "buffer_size"),
        ({"seed_length": 10}, "seed_length"),
        ({"num_reset": -1}, "num_reset"),
        ({"seq_len": 40}, "max_seq_len"),
        ({"reset_turing_machine_every": -1}, "reset_turing_machine_every"),
    ],
)
def test_bad_construction(kw, match):
    with pytest.raises(ValueError, match=match):
        wrapper(**kw)
