"""Every pair of registered flags either is refused at construction or keeps the invariants.

The default run checks a covering subset of the pairs (every flag with about 16 partners,
its family included); ``pytest -m thorough tests/test_flag_pairs.py`` checks all of them.

For each pair (from ``x_attn.registry.FLAGS``): a Decoder with both flags is causal, its cached
incremental logits equal the full forward (float64, 1e-9) when it can be cached, and every
parameter gets a finite gradient, and Transformer-XL segments with mems equal one pass; an
Encoder with both flags ignores masked keys. A refusal must be a ValueError or TypeError raised
while building the model.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from flag_models import VOCAB, bind_condition, build, tokens

from x_attn import Encoder, TransformerWrapper
from x_attn.registry import FLAGS, FlagCase
from x_attn.wrappers.autoregressive import uncacheable_reason

FLAG_CASES = [c for c in FLAGS if c.name != "default"]
# CI runs a covering subset: each flag meets the flags 1, 2, 3, 5, 8, 13, 21 and 34 places
# after it in registry order (neighbours are the same family: every variant of a mechanism
# meets the others), about 16 partners per flag; ``pytest -m thorough`` runs every pair.
STRIDES = (1, 2, 3, 5, 8, 13, 21, 34)


def _in_ci_subset(i: int, j: int, n: int) -> bool:
    return (j - i) % n in STRIDES or (i - j) % n in STRIDES


PAIRS = [
    pytest.param(a, b, marks=() if _in_ci_subset(i, j, len(FLAG_CASES)) else pytest.mark.thorough)
    for (i, a), (j, b) in itertools.combinations(enumerate(FLAG_CASES), 2)
]


def merged(a: FlagCase, b: FlagCase) -> FlagCase:
    return FlagCase(
        f"{a.name}+{b.name}",
        "",
        layers={**a.layers, **b.layers},
        wrapper={**a.wrapper, **b.wrapper},
        stochastic=a.stochastic or b.stochastic,
        loss_only=a.loss_only + b.loss_only,
    )


def build_or_none(case: FlagCase, **kwargs):
    try:
        return build(case, **kwargs)
    except (ValueError, TypeError) as error:
        assert str(error), "a refusal must say why"
        return None


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=lambda c: c.name)
def test_decoder_pair_is_causal_and_caches_exactly(a, b):
    case = merged(a, b)
    net = build_or_none(case)
    if net is None:
        pytest.skip(f"{case.name} is refused at construction")
    x = tokens(2, 10)
    changed = x.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % VOCAB
    with torch.no_grad():
        full = net(x)
        torch.testing.assert_close(net(changed)[:, :6], full[:, :6], rtol=0, atol=1e-12)
        if uncacheable_reason(net) is None:  # the stack's or a wrapper part's (recycling)
            logits, cache = net(x[:, :6], return_cache=True)
            steps = [logits]
            for t in range(6, 10):
                step, cache = net(x[:, t : t + 1], cache=cache, return_cache=True)
                steps.append(step)
            torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-9)
    net.train(not case.stochastic)  # stochastic depth would leave skipped layers without grads
    net(x).sum().backward()
    for name, p in net.named_parameters():
        if name not in case.loss_only:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=lambda c: c.name)
def test_encoder_pair_ignores_masked_keys(a, b):
    case = merged(a, b)
    torch.manual_seed(0)
    try:
        dims = dict(dim=16, depth=2, heads=2, attn_dim_head=8)
        layers = Encoder(**{**dims, **case.layers})  # a case may set its own heads
        net = (
            TransformerWrapper(num_tokens=VOCAB, max_seq_len=16, attn_layers=layers, **case.wrapper)
            .double()
            .eval()
        )
        bind_condition(net.attn_layers)
    except (ValueError, TypeError):
        pytest.skip(f"{case.name} is refused at construction")
    x = tokens(2, 8)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[:, 5:] = False
    changed = x.clone()
    changed[:, 5:] = (changed[:, 5:] + 3) % VOCAB
    with torch.no_grad():
        torch.testing.assert_close(
            net(changed, mask=mask)[:, :5], net(x, mask=mask)[:, :5], rtol=0, atol=1e-12
        )


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=lambda c: c.name)
def test_decoder_pair_mems_equal_one_pass(a, b):
    """Transformer-XL: segments with a memory covering everything equal one causal pass."""
    case = merged(a, b)
    net = build_or_none(case, max_seq_len=6, relative=True, max_mem_len=64)
    if net is None:
        pytest.skip(f"{case.name} is refused at construction")
    x, mems, outs = tokens(2, 13), None, []
    with torch.no_grad():
        for start, end in ((0, 5), (5, 10), (10, 13)):
            out, mems = net(x[:, start:end], mems=mems, return_mems=True)
            outs.append(out)
        torch.testing.assert_close(torch.cat(outs, dim=1), net(x), rtol=0, atol=1e-9)
