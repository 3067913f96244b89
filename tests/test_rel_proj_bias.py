"""Relative position bias from a query-projected distance basis (x-transformers'
RelativeProjPositionalBias / attn_use_rel_proj_pos_bias): the module against its formula written
as loops here, the layer against float64 reference attention with that bias, the cache.

Shape legend: b batch, n tokens, h heads, m basis curves, d model dim, dh head dim.
"""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from flag_models import build, prefill_then_steps, tokens
from reference import reference_attention

from x_attn import Attention, Decoder, RelativeProjPositionalBias
from x_attn.registry import flag_case

B, N, D, H, DH, M, R = 2, 5, 16, 2, 8, 3, 4


def loop_bias(rel: RelativeProjPositionalBias, x: torch.Tensor, q_pos, k_pos) -> torch.Tensor:
    """bias[b, h, i, j] = sum_r w[b, h, i, r] bank[r, qi - kj] for 0 <= qi - kj < R, else 0."""
    w = rearrange(rel.to_distance_weights(x), "b i (h m) -> b h i m", h=H)
    out = torch.zeros(x.shape[0], H, len(q_pos), len(k_pos), dtype=x.dtype)
    for i, qi in enumerate(q_pos):
        for j, kj in enumerate(k_pos):
            if 0 <= qi - kj < R:
                out[:, :, i, j] = (w[:, :, i] * rel.distance_bank[:, qi - kj]).sum(-1)
    return out


def test_module_equals_the_formula() -> None:
    torch.manual_seed(0)
    rel = RelativeProjPositionalBias(D, H, num_distance_basis=M, max_dist=R).double()
    x = torch.randn(B, N, D, dtype=torch.float64)
    expected = loop_bias(rel, x, list(range(3, 3 + N)), list(range(3 + N)))
    torch.testing.assert_close(rel(x, seq_len_k=3 + N), expected, atol=1e-12, rtol=0)


def test_layer_equals_reference_attention_with_the_bias() -> None:
    torch.manual_seed(1)
    layer = Attention(
        D,
        H,
        causal=True,
        dim_head=DH,
        use_rel_proj_pos_bias=True,
        rel_proj_num_distance_basis=M,
        rel_proj_max_dist=R,
    ).double()
    x = torch.randn(B, N, D, dtype=torch.float64)
    proj = layer.proj
    q, k, v = (
        rearrange(x @ w.weight.T, "b n (h e) -> b h n e", h=H)
        for w in (proj.to_q, proj.to_k, proj.to_v)
    )
    bias = loop_bias(layer.rel_proj_pos_bias.rel, x, list(range(N)), list(range(N)))
    heads = reference_attention(q, k, v, bias=bias, causal=True)
    expected = rearrange(heads, "b h n e -> b n (h e)") @ layer.to_out.weight.T
    torch.testing.assert_close(layer(x), expected, atol=1e-12, rtol=0)


def test_cached_decode_equals_full() -> None:
    net, x = build(flag_case("attn_use_rel_proj_pos_bias")), tokens(2, 9)
    with torch.no_grad():
        stepped, _ = prefill_then_steps(net, x, 5)
        torch.testing.assert_close(stepped, net(x), atol=1e-9, rtol=0)


def test_refusals() -> None:
    with pytest.raises(ValueError, match="cross-attention context has no distance"):
        Decoder(dim=D, depth=1, cross_attend=True, cross_attn_use_rel_proj_pos_bias=True)
    with pytest.raises(ValueError, match="'max_dist' must be"):
        RelativeProjPositionalBias(D, H, max_dist=0)
