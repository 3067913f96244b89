"""CoPE, contextual position encoding (arXiv 2405.18134): ``attn_use_cope``, ``attn_cope_max_pos``.

The reference is the paper's definition written naively in float64, one (head, i, j) at a
time: gates ``g_ij = sigmoid(q_i . k_j / sqrt(d))`` over the keys j <= i, positions
``p_ij = sum_{j <= t <= i} g_it`` clamped to P - 1, the logit ``q_i . e[p]`` interpolated
between floor(p) and ceil(p) and added, causal softmax, output map. Invariants: identity at
initialisation (e = 0), causality, cached decoding; x-transformers on copied weights.

Shape legend: b batch, n sequence, h heads, d model dim, dh head dim, P max positions.
"""

from __future__ import annotations

import math

import pytest
import torch
from flag_models import (
    assert_cache_matches_full,
    assert_causal_stack,
    block_output,
    naive_block_output,
    one_layer_decoder,
)
from torch import Tensor
from xt_pairs import copied_decoder_logits

from x_attn import Decoder, Encoder

F64 = torch.float64
DIM, HEADS, DH, P = 16, 2, 4, 3


def cope_decoder() -> Decoder:
    stack = one_layer_decoder(DIM, HEADS, DH, attn_use_cope=True, attn_cope_max_pos=P)
    with torch.no_grad():
        stack.layers[0].block.cope.pos_emb.normal_(0.0, 1.0)
    return stack


def interpolated(per_position: Tensor, p: float) -> Tensor:
    """The paper's interpolation of the integer-position logits at a fractional position."""
    lo, hi = math.floor(p), math.ceil(p)
    w = p - lo
    return (1 - w) * per_position[lo] + w * per_position[hi]


def naive_cope(stack: Decoder, x: Tensor) -> Tensor:
    emb = stack.layers[0].block.cope.pos_emb

    def logits(h: Tensor, hd: int, q: Tensor, k: Tensor) -> list[list[Tensor]]:
        rows = []
        for i in range(len(q)):
            plain = [float(q[i] @ k[j]) / math.sqrt(DH) for j in range(i + 1)]
            gates = [1 / (1 + math.exp(-lg)) for lg in plain]
            per_position = emb @ q[i]  # (P,)
            scores = []
            for j in range(i + 1):
                p = min(sum(gates[j : i + 1]), P - 1)
                scores.append(plain[j] + interpolated(per_position, p))
            rows.append(scores)
        return rows

    return naive_block_output(stack, x, HEADS, DH, logits)


def test_cope_matches_the_papers_definition() -> None:
    stack = cope_decoder()
    x = torch.randn(2, 7, DIM, dtype=F64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(block_output(stack, x), naive_cope(stack, x), atol=1e-12, rtol=0)


def test_cope_is_plain_attention_at_initialisation() -> None:
    """e = 0 (the paper's initialisation): the layer is plain causal attention."""
    torch.manual_seed(0)
    ours = Decoder(dim=DIM, depth=1, heads=HEADS, attn_dim_head=DH, attn_use_cope=True)
    plain = Decoder(dim=DIM, depth=1, heads=HEADS, attn_dim_head=DH)
    plain.load_state_dict({k: v for k, v in ours.state_dict().items() if "cope" not in k})
    x = torch.randn(1, 5, DIM)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), plain(x), atol=1e-6, rtol=0)


def test_cope_is_causal() -> None:
    assert_causal_stack(cope_decoder(), DIM)


@pytest.mark.parametrize("mem_kv", [0, 2])
def test_cope_cached_decode_equals_full_forward(mem_kv: int) -> None:
    torch.manual_seed(0)
    flags = dict(dim=DIM, depth=2, heads=HEADS, attn_dim_head=DH, attn_num_mem_kv=mem_kv)
    assert_cache_matches_full(Decoder(**flags, attn_use_cope=True))


def test_cope_refusals() -> None:
    with pytest.raises(ValueError, match="attn_use_cope: .*causal self-attention only"):
        Encoder(dim=DIM, depth=1, heads=HEADS, attn_use_cope=True)
    with pytest.raises(ValueError, match="cross_attn_use_cope: .*causal self-attention only"):
        Decoder(dim=DIM, depth=1, cross_attend=True, cross_attn_use_cope=True)
    with pytest.raises(ValueError, match="attn_cope_max_pos=4.*no effect without 'attn_use_cope'"):
        Decoder(dim=DIM, depth=1, attn_cope_max_pos=4)
    with pytest.raises(ValueError, match="attn_cope_max_pos"):
        Decoder(dim=DIM, depth=1, attn_use_cope=True, attn_cope_max_pos=0)
    with pytest.raises(ValueError, match="attn_flash=True.*attn_use_cope"):
        Decoder(dim=DIM, depth=1, attn_use_cope=True, attn_flash=True)
    with pytest.raises(ValueError, match="attn_use_cope .*polar_pos_emb widens"):
        Decoder(dim=DIM, depth=1, attn_use_cope=True, polar_pos_emb=True)
    with pytest.raises(ValueError, match="attn_use_cope: .*drop causal=False"):
        cope_decoder()(torch.randn(1, 3, DIM, dtype=F64), causal=False)


@pytest.mark.parametrize("rotary", [False, True], ids=["plain", "rotary"])
def test_cope_equals_x_transformers_on_copied_weights(rotary: bool) -> None:
    flags = dict(dim=DIM, depth=2, heads=HEADS, attn_dim_head=DH, attn_use_cope=True)
    flags |= dict(attn_cope_max_pos=P, rotary_pos_emb=rotary)
    flags |= dict(rotary_emb_dim=DH) if rotary else {}
    ours, theirs = copied_decoder_logits(flags)  # the jitter moves the zero embeddings too
    # x-transformers' manual path (CoPE needs the scores) takes the softmax in float32
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
