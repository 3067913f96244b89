"""recycling (AlphaFold): K runs, each adding R e_{k-1} to the input embeddings.

Checked against the runs written out by hand (the model called on its own outputs), against
x-transformers on copied weights (skipped without it), for the stop-gradient between runs, for
the random run count in training and for its refusals.

Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

import pytest
import torch
from xt_pairs import xt_pair

from x_attn import Decoder, TransformerWrapper
from x_attn.wrappers.autoregressive import AutoregressiveWrapper

V, D = 12, 16


def model(**extra):
    torch.manual_seed(0)
    layers = Decoder(dim=D, depth=2, heads=2, attn_dim_head=8)
    return TransformerWrapper(
        num_tokens=V, max_seq_len=16, recycling=True, attn_layers=layers, **extra
    ).double()


def by_hand(m, tokens, steps):
    """The plain model (recycle_steps=1) fed sum_embeds = R e of the run before."""
    recycled = None
    for _ in range(steps - 1):
        e = m(tokens, return_embeddings=True, recycle_steps=1, sum_embeds=recycled)
        recycled = e @ m.recycled_proj.weight.T
    return m(tokens, recycle_steps=1, sum_embeds=recycled)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_runs_feed_their_outputs_back(steps):
    m = model().eval()
    tokens = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(1))
    expected = by_hand(m, tokens, steps)
    torch.testing.assert_close(m(tokens, recycle_steps=steps), expected, rtol=1e-10, atol=1e-10)
    assert (by_hand(m, tokens, 2) - by_hand(m, tokens, 1)).abs().max() > 1e-3
    # eval without recycle_steps: train_max_recycle_steps runs
    torch.testing.assert_close(m(tokens), by_hand(m, tokens, 4), rtol=1e-10, atol=1e-10)


def test_earlier_runs_take_no_gradient():
    m = model()
    tokens = torch.randint(0, V, (1, 5), generator=torch.Generator().manual_seed(1))
    m(tokens, recycle_steps=2).sum().backward()
    got = m.token_emb.weight.grad.clone()
    m.zero_grad()
    with torch.no_grad():
        first = m(tokens, return_embeddings=True, recycle_steps=1)
    m(tokens, recycle_steps=1, sum_embeds=m.recycled_proj(first)).sum().backward()
    torch.testing.assert_close(got, m.token_emb.weight.grad, rtol=1e-12, atol=1e-12)
    assert m.recycled_proj.weight.grad.abs().sum() > 0


def test_training_draws_the_run_count():
    m = model(train_max_recycle_steps=3).train()
    tokens = torch.randint(0, V, (1, 5), generator=torch.Generator().manual_seed(1))
    outs = {k: m(tokens, recycle_steps=k) for k in (1, 2, 3)}
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = m(tokens)
        seen |= {k for k, o in outs.items() if torch.allclose(o, out, atol=1e-12)}
    assert seen == {1, 2, 3}


def test_refusals_and_generation_without_a_cache():
    m = model().eval()
    tokens = torch.randint(0, V, (1, 4))
    with pytest.raises(ValueError, match="return_cache cannot be used with recycling"):
        m(tokens, return_cache=True)
    with pytest.raises(ValueError, match="recycle_steps= needs recycling=True"):
        TransformerWrapper(num_tokens=V, max_seq_len=8, attn_layers=Decoder(dim=D, depth=1))(
            tokens, recycle_steps=2
        )
    with pytest.raises(ValueError, match="train_max_recycle_steps"):
        model(train_max_recycle_steps=0)
    with pytest.raises(ValueError, match="max_mem_len"):
        model(max_mem_len=4)
    gen = AutoregressiveWrapper(m)
    with pytest.warns(RuntimeWarning, match="recycling"):
        out = gen.generate(tokens, 3)
    assert out.shape == (1, 3)


@pytest.mark.parametrize("steps", [1, 3])
def test_equals_x_transformers(steps):
    flags = dict(dim=D, depth=2, heads=2, attn_dim_head=8, attn_flash=True)
    theirs, ours = xt_pair(
        lambda lib: lib.TransformerWrapper(
            num_tokens=V, max_seq_len=16, recycling=True, attn_layers=lib.Decoder(**flags)
        )
    )
    tokens = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = theirs(tokens, recycle_steps=steps), ours(tokens, recycle_steps=steps)
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=0)
