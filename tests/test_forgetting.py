"""Forgetting Transformer, FoX (arXiv 2503.02130): ``attn_data_dependent_alibi``.

The reference is the paper's logit written naively in float64, one (head, i, j) at a time:
``q_i . k_j / sqrt(d) + sum_{j < l <= i} log sigmoid(w_h . x_l + b_h)``, causal softmax, output
map. Invariants: causality, cached decoding and padded rows, refusals of non-causal use;
x-transformers on copied weights (when installed).

Shape legend: b batch, n sequence, h heads, d model dim, dh head dim.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from flag_models import (
    assert_cache_matches_full,
    assert_causal_stack,
    block_output,
    naive_block_output,
    one_layer_decoder,
)
from torch import Tensor
from xt_pairs import copied_decoder_logits

from x_attn import Attention, Decoder, Encoder

F64 = torch.float64
DIM, HEADS, DH = 16, 2, 4


def fox_decoder() -> Decoder:
    stack = one_layer_decoder(DIM, HEADS, DH, attn_data_dependent_alibi=True)
    with torch.no_grad():  # gates well inside (0, 1): the decay matters
        stack.layers[0].block.forget_gates.to_gates.bias.normal_(0.0, 1.0)
    return stack


def two_layer_flags(mem_kv: int) -> dict:
    return dict(
        dim=DIM,
        depth=2,
        heads=HEADS,
        attn_dim_head=DH,
        attn_num_mem_kv=mem_kv,
        attn_data_dependent_alibi=True,
    )


def naive_fox(stack: Decoder, x: Tensor) -> Tensor:
    """The attention block's output by the paper's formula (pre-norm input, no cache)."""
    gates = stack.layers[0].block.forget_gates.to_gates

    def logits(h: Tensor, hd: int, q: Tensor, k: Tensor) -> list[list[Tensor]]:
        log_f = F.logsigmoid(h @ gates.weight.T + gates.bias)  # (n, h)
        zero = torch.zeros((), dtype=F64)
        return [
            [
                q[i] @ k[j] / math.sqrt(DH) + sum((log_f[t, hd] for t in range(j + 1, i + 1)), zero)
                for j in range(i + 1)
            ]
            for i in range(len(q))
        ]

    return naive_block_output(stack, x, HEADS, DH, logits)


def test_fox_matches_the_papers_formula() -> None:
    stack = fox_decoder()
    x = torch.randn(2, 6, DIM, dtype=F64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(block_output(stack, x), naive_fox(stack, x), atol=1e-12, rtol=0)


def test_fox_is_causal() -> None:
    assert_causal_stack(fox_decoder(), DIM)


@pytest.mark.parametrize("mem_kv", [0, 1])
def test_fox_cached_decode_equals_full_forward(mem_kv: int) -> None:
    torch.manual_seed(0)
    assert_cache_matches_full(Decoder(**two_layer_flags(mem_kv)))


def test_fox_padded_rows_change_no_real_row() -> None:
    """A padded row's gate is 1: padding placed between real rows changes nothing for them."""
    stack = fox_decoder()
    x = torch.randn(1, 6, DIM, dtype=F64, generator=torch.Generator().manual_seed(4))
    padded = torch.cat((x[:, :3], torch.randn(1, 2, DIM, dtype=F64), x[:, 3:]), dim=1)
    mask = torch.tensor([[True] * 3 + [False] * 2 + [True] * 3])
    with torch.no_grad():
        alone = stack(x)
        got = stack(padded, mask=mask)
    torch.testing.assert_close(got[mask].unsqueeze(0), alone, atol=1e-12, rtol=0)


def test_fox_refuses_non_causal_use() -> None:
    with pytest.raises(ValueError, match="attn_data_dependent_alibi: .*causal attention only"):
        Encoder(dim=DIM, depth=1, heads=HEADS, attn_data_dependent_alibi=True)
    with pytest.raises(ValueError, match="causal attention only"):
        Attention(DIM, heads=HEADS, data_dependent_alibi=True)
    with pytest.raises(ValueError, match="cross_attn_data_dependent_alibi: .*cross-attention"):
        Decoder(dim=DIM, depth=1, cross_attend=True, cross_attn_data_dependent_alibi=True)
    stack = fox_decoder()
    with pytest.raises(ValueError, match="attn_data_dependent_alibi: .*drop causal=False"):
        stack(torch.randn(1, 3, DIM, dtype=F64), causal=False)


@pytest.mark.parametrize("mem_kv", [0, 1])
def test_fox_equals_x_transformers_on_copied_weights(mem_kv: int) -> None:
    # x-transformers' fused path (its manual one takes the softmax in float32)
    ours, theirs = copied_decoder_logits(two_layer_flags(mem_kv), dict(attn_flash=True))
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=0)
