"""Masked key rows have no effect at all, whatever they hold (NaN and inf included).

Invariant: the outputs of real positions are the same whether the masked rows of a
cross-attention ``context`` (or of a stack's own input) hold NaN, inf or ordinary numbers, and
equal to the outputs computed without those rows. Checked for cross-attention with each score
feature that touches masked positions (manual kernel, talking heads, entmax, memory key/values)
and for self-attention at the stack level (no wrapper zeroing the input first).

Shape legend: b batch, n sequence, j context length, d model dim.
"""

from __future__ import annotations

import pytest
import torch
from flag_models import DIM, DIMS, build, tokens

from x_attn import Decoder, Encoder
from x_attn.registry import flag_case

ATOL = 1e-10
CROSS_FLAGS = {
    "default": {},
    "manual": {"cross_attn_flash": False},
    "talking_heads": {"cross_attn_talking_heads": True},
    "entmax15": {"cross_attn_use_entmax15": True},
    "mem_kv": {"cross_attn_num_mem_kv": 2},
    "sparse_topk": {"cross_attn_sparse_topk": 2},
}


def context_pair(fill: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clean context, the same with ``fill`` in its masked rows, context_mask)."""
    torch.manual_seed(3)
    context = torch.randn(2, 6, DIM, dtype=torch.float64)
    context_mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    dirty = context.masked_fill(~context_mask.unsqueeze(-1), fill)
    return context, dirty, context_mask


@pytest.mark.parametrize("fill", [float("nan"), float("inf"), 1e30])
@pytest.mark.parametrize("name", sorted(CROSS_FLAGS))
def test_masked_context_rows_have_no_effect(name: str, fill: float) -> None:
    net = build(flag_case("default"), cross_attend=True, **CROSS_FLAGS[name])
    x = tokens(2, 5)
    context, dirty, context_mask = context_pair(fill)
    with torch.no_grad():
        clean = net(x, context=context, context_mask=context_mask)
        out = net(x, context=dirty, context_mask=context_mask)
        alone = net(x[:1], context=context[:1, :4])  # row 0 without its masked rows
    assert bool(out.isfinite().all())
    torch.testing.assert_close(out, clean, atol=ATOL, rtol=0)
    torch.testing.assert_close(out[:1], alone, atol=ATOL, rtol=0)


def test_masked_context_rows_have_no_effect_on_gradients() -> None:
    net = build(flag_case("default"), cross_attend=True).train()
    _, dirty, context_mask = context_pair(float("nan"))
    dirty.requires_grad_(True)
    net(tokens(2, 5), context=dirty, context_mask=context_mask).sum().backward()
    assert all(p.grad is None or bool(p.grad.isfinite().all()) for p in net.parameters())
    assert bool(dirty.grad[context_mask].isfinite().all())


@pytest.mark.parametrize("stack", [Encoder, Decoder])
def test_masked_input_rows_of_a_stack_have_no_effect(stack) -> None:
    """Called directly (no wrapper zeroing the input), a stack ignores its masked rows too."""
    torch.manual_seed(0)
    layers = stack(depth=2, **{k: v for k, v in DIMS.items() if k != "depth"}).double().eval()
    x = torch.randn(2, 6, DIM, dtype=torch.float64)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    dirty = x.masked_fill(~mask.unsqueeze(-1), float("nan"))
    with torch.no_grad():
        out, clean = layers(dirty, mask=mask), layers(x, mask=mask)
        alone = layers(x[1:, :3])
    torch.testing.assert_close(out[mask], clean[mask], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[1, :3], alone[0], atol=ATOL, rtol=0)
