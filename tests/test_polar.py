"""PoPE, polar coordinate position embeddings (arXiv 2509.10534): ``polar_pos_emb``.

The reference is the paper's score written naively in float64, one (head, i, j) at a time:
``sum_c softplus(q_ic) softplus(k_jc) cos((i - j) theta_c - delta_c) / sqrt(d)`` with
``theta_c = 10000 ** (-c / d)`` and ``delta`` clamped to [-2 pi, 0], then causal softmax and
the output map. Invariants: shifting every position leaves the outputs unchanged (relative),
cached decoding equals the full forward; x-transformers on copied weights (when installed).

Shape legend: b batch, n sequence, h heads, d head dim.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from flag_models import (
    assert_cache_matches_full,
    block_output,
    naive_block_output,
    one_layer_decoder,
)
from torch import Tensor
from xt_pairs import copied_decoder_logits

from x_attn import Decoder, Encoder

F64 = torch.float64
DIM, HEADS, DH = 16, 2, 4


def polar_decoder() -> Decoder:
    stack = one_layer_decoder(DIM, HEADS, DH, polar_pos_emb=True)
    offset = stack.layers[0].block.polar.phase_offset
    # 8 evenly spaced offsets over [-2 pi - 1.5, 1.5], shuffled over heads and features: two
    # below -2 pi and two above 0, so the clamp acts on both ends (and the middle passes)
    spread = torch.linspace(-2 * math.pi - 1.5, 1.5, offset.numel(), dtype=offset.dtype)
    order = torch.randperm(offset.numel(), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        offset.copy_(spread[order].view_as(offset))
    assert (offset < -2 * math.pi).sum() == 2 and (offset > 0).sum() == 2, offset
    assert ((offset > -2 * math.pi + 0.5) & (offset < -0.5)).any(), offset
    return stack


def _naive_layer_output(stack: Decoder, x: Tensor) -> Tensor:
    delta = stack.layers[0].block.polar.phase_offset.clamp(-2 * math.pi, 0)
    theta = [10000.0 ** (-c / DH) for c in range(DH)]

    def logits(h: Tensor, hd: int, q: Tensor, k: Tensor) -> list[list[Tensor]]:
        mq, mk = F.softplus(q), F.softplus(k)
        return [
            [
                sum(
                    mq[i, c] * mk[j, c] * math.cos((i - j) * theta[c] - float(delta[hd, c]))
                    for c in range(DH)
                )
                / math.sqrt(DH)
                for j in range(i + 1)
            ]
            for i in range(len(q))
        ]

    return naive_block_output(stack, x, HEADS, DH, logits)


def test_polar_matches_the_papers_score() -> None:
    stack = polar_decoder()
    x = torch.randn(2, 6, DIM, dtype=F64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        block_output(stack, x), _naive_layer_output(stack, x), atol=1e-12, rtol=0
    )


def test_polar_is_relative_shifted_positions_change_nothing() -> None:
    stack = polar_decoder()
    x = torch.randn(2, 7, DIM, dtype=F64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = stack(x)
        shifted = stack(x, pos=torch.arange(7) + 11)
        spread = stack(x, pos=torch.arange(7) * 2)  # distances doubled: must differ
    torch.testing.assert_close(shifted, plain, atol=1e-10, rtol=0)
    assert (spread - plain).abs().max() > 1e-4


def test_polar_cached_decode_equals_full_forward() -> None:
    torch.manual_seed(0)
    assert_cache_matches_full(
        Decoder(dim=DIM, depth=2, heads=HEADS, attn_dim_head=DH, polar_pos_emb=True), prefill=5
    )


def test_polar_refusals() -> None:
    with pytest.raises(ValueError, match="polar_pos_emb and rotary_pos_emb"):
        Decoder(dim=DIM, depth=1, polar_pos_emb=True, rotary_pos_emb=True)
    with pytest.raises(ValueError, match="polar_pos_emb and shaw_rel_pos"):
        Decoder(dim=DIM, depth=1, polar_pos_emb=True, shaw_rel_pos=True)
    with pytest.raises(ValueError, match="rotary_base.*configures rotary_pos_emb"):
        Decoder(dim=DIM, depth=1, polar_pos_emb=True, rotary_base=500.0)
    enc = Encoder(dim=DIM, depth=1, heads=HEADS, attn_dim_head=DH, polar_pos_emb=True)
    assert enc(torch.randn(1, 4, DIM)).shape == (1, 4, DIM)  # PoPE is not causal-only


def test_polar_equals_x_transformers_on_copied_weights() -> None:
    flags = dict(dim=DIM, depth=2, heads=HEADS, attn_dim_head=DH, polar_pos_emb=True)

    def spread_offsets(theirs: torch.nn.Module) -> None:
        theirs.attn_layers.polar_pos_emb.learned_bias.uniform_(-2 * math.pi - 1, 1.0)

    ours, theirs = copied_decoder_logits(flags, dict(attn_flash=True), spread_offsets)
    # x-transformers forms its angles in float32: agreement to float32 angle precision
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
