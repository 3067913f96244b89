"""The decode fast paths change no value: each is checked against the general path it skips.

- AttnMask.dense returns None exactly when the general merge would allow every pair;
- RMSNorm through torch's rms_norm (float32 / float64) equals the written-out formula bit for
  bit, in values and gradients;
- dropout_if_active is the module itself whenever it could act.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from x_attn.layers.norms import RMSNorm
from x_attn.masks import CAUSAL, AttnMask, Span
from x_attn.utils import dropout_if_active


def _general(spec: AttnMask) -> torch.Tensor | None:
    """The merge without the shortcut: every row and column through ``block``."""
    return spec.block(torch.arange(len(spec.q)), torch.arange(spec.free + spec.width))


@pytest.mark.parametrize("q_start, n, padded", itertools.product((3, 5, 7), (1, 2), (False, True)))
def test_dense_shortcut_agrees_with_the_general_merge(q_start: int, n: int, padded: bool) -> None:
    keys = Span(0, 8)
    padding = torch.tensor([[False] + [True] * 7]) if padded else None
    spec = AttnMask(Span(q_start, q_start + n), keys, (CAUSAL,), key_padding=padding)
    general, dense = _general(spec), spec.dense()
    hides = general is not None and not bool(general.all())
    assert spec.hides_nothing() == (not hides)
    if general is None or not hides:
        assert dense is None
    else:
        assert torch.equal(dense, general)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rms_norm_fast_path_is_bit_identical_to_the_formula(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-6).to(dtype)
    with torch.no_grad():
        norm.g.normal_()
    x = torch.randn(3, 5, 16, dtype=dtype, requires_grad=True)
    out = norm(x)
    (out * torch.linspace(-1, 1, 16, dtype=dtype)).sum().backward()
    grads = x.grad.clone(), norm.g.grad.clone()
    x.grad, norm.g.grad = None, None
    ref = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + 1e-6) * norm.g
    (ref * torch.linspace(-1, 1, 16, dtype=dtype)).sum().backward()
    assert torch.equal(out, ref)
    assert torch.equal(grads[0], x.grad) and torch.equal(grads[1], norm.g.grad)


def test_rms_norm_half_precision_still_reduces_in_float32() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(16).to(torch.bfloat16)
    x = torch.randn(2, 16).to(torch.bfloat16) * 300
    xf = x.float()
    expected = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-8)).to(x.dtype) * norm.g
    assert torch.equal(norm(x), expected)


def test_dropout_if_active_skips_only_where_dropout_is_the_identity() -> None:
    x = torch.ones(1000)
    drop = torch.nn.Dropout(0.5)
    torch.manual_seed(0)
    trained = dropout_if_active(drop, x)
    assert bool((trained == 0).any()) and bool((trained == 2).any())
    assert dropout_if_active(drop.eval(), x) is x
    assert dropout_if_active(torch.nn.Dropout(0.0), x) is x
