"""The x-transformers cache protocol against x-transformers itself, on the same weights.

Flag sets both libraries share (a pre-norm decoder with learned absolute positions, or with
rotary positions). Each protocol call is made on both models and the logits must agree
(float64, 1e-6: x-transformers computes its rotary frequencies in float32 and normalises apart
from us, while a protocol mistake moves logits by O(1)): ``return_intermediates=True`` then the
whole sequence with ``cache=``, the same cache continued twice, ``input_not_include_cache=True``
one token at a time, and ``seq_start_pos`` left padding decoded step by step. Skipped when
x-transformers is not installed.

Shape legend: b batch, n sequence, v vocabulary, d model dim.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import x_attn

xt = pytest.importorskip("x_transformers")
from x_attn.interop import from_x_transformers  # noqa: E402

ATOL = 1e-6
VOCAB = 24
FLAG_SETS = {"absolute": {}, "rotary": {"rotary_pos_emb": True}}


def pair(flags: dict) -> tuple[nn.Module, nn.Module]:
    """(x_attn, x-transformers) token decoders with the same jittered weights, float64, eval."""
    layers = dict(dim=16, depth=2, heads=2, attn_dim_head=64, **flags)  # rotary dim 32 in both
    torch.manual_seed(0)
    theirs = xt.TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=32, attn_layers=xt.Decoder(**layers)
    )
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ours = x_attn.TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=32, attn_layers=x_attn.Decoder(**layers)
    )
    from_x_transformers(theirs, ours)
    return ours.double().eval(), theirs.double().eval()


def ids(b: int, n: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, n), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", sorted(FLAG_SETS))
def test_same_weights_same_forward(name: str) -> None:
    ours, theirs = pair(FLAG_SETS[name])
    x = ids(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", sorted(FLAG_SETS))
def test_whole_sequence_with_the_returned_cache(name: str) -> None:
    ours, theirs = pair(FLAG_SETS[name])
    x = ids(2, 9)
    y = x.clone()
    y[:, 6] = (x[:, 6] + 1) % VOCAB
    with torch.no_grad():
        for model_x in (x, y):  # one cache, continued twice
            got, want = [], []
            for model, out in ((ours, got), (theirs, want)):
                logits, cache = model(x[:, :6], return_intermediates=True)
                out.append(logits)
                out.append(model(model_x[:, :7], cache=cache))
                out.append(model(model_x[:, :7], cache=cache))  # again: the cache is unchanged
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", sorted(FLAG_SETS))
def test_input_not_include_cache_step_by_step(name: str) -> None:
    ours, theirs = pair(FLAG_SETS[name])
    x = ids(2, 7)
    with torch.no_grad():
        outs = []
        for model in (ours, theirs):
            logits, cache = model(x[:, :3], return_intermediates=True)
            steps = [logits]
            for t in range(3, 7):
                logits, cache = model(
                    x[:, t : t + 1],
                    cache=cache,
                    input_not_include_cache=True,
                    return_intermediates=True,
                )
                steps.append(logits)
            outs.append(torch.cat(steps, dim=1))
    torch.testing.assert_close(outs[0], outs[1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", sorted(FLAG_SETS))
def test_seq_start_pos_matches_x_transformers(name: str) -> None:
    """Left padding by seq_start_pos: the real positions agree, in one pass and step by step.

    In float32: in float64, x-transformers 2.31 returns NaN for every position of a row with
    left padding (its padded queries see no key).
    """
    ours, theirs = pair(FLAG_SETS[name])
    ours, theirs = ours.float(), theirs.float()
    x, start = ids(2, 8), torch.tensor([3, 0])
    real = torch.arange(8) >= start.unsqueeze(-1)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(x, seq_start_pos=start)[real],
            theirs(x, seq_start_pos=start)[real],
            atol=1e-5,
            rtol=0,
        )
        logits, cache = ours(x[:, :5], seq_start_pos=start, return_intermediates=True)
        step = ours(x[:, :6], cache=cache, seq_start_pos=start)
        full = theirs(x[:, :6], seq_start_pos=start)
    torch.testing.assert_close(step, full[:, 5:], atol=1e-5, rtol=0)
