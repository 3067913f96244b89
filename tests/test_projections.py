"""Projection objects: key/value head groups, and positions applied to the rows projected.

Shape legend: b batch, h query heads, hk key/value heads, i queries, j keys, d model dim,
dh head dim, r rotary dim.
"""

from __future__ import annotations

import pytest
import torch
from reference import reference_attention

from x_attn.attention.projections import MultiHeadProjection
from x_attn.kernels.inputs import AttnInputs
from x_attn.kernels.manual import manual_attention
from x_attn.kernels.sdpa import sdpa_attention
from x_attn.positional.context import NO_POSITIONS, PositionContext
from x_attn.positional.rotary import RotaryEmbedding, apply_rotary

B, H, HK, DH, D = 2, 4, 2, 8, 16


def _x(n: int, seed: int) -> torch.Tensor:
    return torch.randn(B, n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("kernel", [sdpa_attention, lambda i: manual_attention(i)[0]])
def test_grouped_kv_heads_equal_the_reference(kernel) -> None:
    proj = MultiHeadProjection(D, H, DH, kv_heads=HK).double()
    x = _x(5, 0)
    q, (k, v) = proj.project(x, x, NO_POSITIONS, NO_POSITIONS)
    assert k.shape == v.shape == (B, HK, 5, DH) and q.shape == (B, H, 5, DH)
    mask = torch.tensor([[True] * 5, [False] + [True] * 4])[:, None, None, :]
    inputs = AttnInputs(q, k, v, mask=mask, causal=True, scale=DH**-0.5)
    expected = reference_attention(q, k, v, mask=mask, causal=True)
    torch.testing.assert_close(kernel(inputs), expected, atol=1e-12, rtol=0)


def test_kv_heads_must_divide_heads() -> None:
    with pytest.raises(ValueError, match="kv_heads=3 must divide heads=4"):
        MultiHeadProjection(D, H, DH, kv_heads=3)


def _heads(t: torch.Tensor) -> torch.Tensor:
    return t.unflatten(-1, (H, DH)).transpose(1, 2)  # (b n (h dh)) -> (b h n dh)


def test_positions_act_on_exactly_the_rows_projected() -> None:
    """Rows at absolute positions 7..9 of tables starting at 4 get table rows 3..5."""
    proj = MultiHeadProjection(D, H, DH).double()
    angles = RotaryEmbedding(4)(torch.arange(4, 10), dtype=torch.float64)
    infused = torch.randn(6, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ctx = PositionContext(3, 6, rotary=angles, infused=infused, start=4)
    x = _x(3, 2)
    rows = ctx.rows(ctx.queries)
    q, (k, v) = proj.queries(x, rows), proj.keys(x, rows)
    plain_q = _heads((x + infused[3:]) @ proj.to_q.weight.T)
    plain_k = _heads((x + infused[3:]) @ proj.to_k.weight.T)
    torch.testing.assert_close(q, apply_rotary(plain_q, angles[3:]), atol=1e-12, rtol=0)
    torch.testing.assert_close(k, apply_rotary(plain_k, angles[3:]), atol=1e-12, rtol=0)
    torch.testing.assert_close(v, _heads(x @ proj.to_v.weight.T), atol=1e-12, rtol=0)
    assert not torch.allclose(q, apply_rotary(plain_q, angles[:3]))  # other rows would differ
