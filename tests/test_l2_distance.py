"""L2-distance attention (arXiv 2006.04710) against the formula written out in float64.

The reference forms ``-scale * |q_i - k_j|^2`` by subtracting every key from every query (no
augmentation), masks, takes the softmax and the weighted sum of values.

Shape legend: b batch, h heads, hk key heads, i queries, j keys, d head dim.
"""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from test_attention_features import DIM_HEAD, HEADS, close, inputs, make, project_out
from test_qk_norm import by_hand_l2

from x_attn import Decoder, TransformerWrapper


def distance_attention(q, k, v, scale: float, causal: bool) -> torch.Tensor:
    """(b h i d), (b hk j d), (b hk j dv) -> (b h i dv) with logits -scale |q - k|^2."""
    k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    logits = -scale * (q.unsqueeze(-2) - k.unsqueeze(-3)).pow(2).sum(-1)
    if causal:
        i, j = logits.shape[-2:]
        future = torch.ones(i, j, dtype=torch.bool).triu(1)
        logits = logits.masked_fill(future, float("-inf"))
    return logits.softmax(-1) @ v


def hand_qkv(attn, x, kv_heads: int):
    inner = attn.proj.inner
    q = rearrange(x @ inner.to_q.weight.T, "b n (h d) -> b h n d", h=HEADS)
    k = rearrange(x @ inner.to_k.weight.T, "b n (h d) -> b h n d", h=kv_heads)
    v = rearrange(x @ inner.to_v.weight.T, "b n (h d) -> b h n d", h=kv_heads)
    return q, k, v


@pytest.mark.parametrize("flash", [None, False])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("one_kv_head", [False, True])
def test_logits_are_minus_scaled_squared_distances(one_kv_head, causal, flash):
    attn = make(l2_distance=True, one_kv_head=one_kv_head, causal=causal, flash=flash).eval()
    x = inputs(spread=0.5)
    q, k, v = hand_qkv(attn, x, 1 if one_kv_head else HEADS)
    expected = distance_attention(q, k, v, DIM_HEAD**-0.5, causal)
    close(attn(x), project_out(attn, expected))
    assert attn.explain().startswith("manual" if flash is False else "sdpa")


def test_with_qk_norm_the_distance_is_between_unit_vectors_at_its_temperature():
    attn = make(l2_distance=True, qk_norm=True, qk_norm_scale=4.0).eval()
    x = inputs()
    q, k, v = hand_qkv(attn, x, HEADS)
    expected = distance_attention(by_hand_l2(q, 1), by_hand_l2(k, 1), v, 4.0, False)
    close(attn(x), project_out(attn, expected))


def test_returned_logits_are_the_distances_not_the_augmented_products():
    attn = make(l2_distance=True, flash=False).eval()
    x = inputs()
    q, k, _ = hand_qkv(attn, x, HEADS)
    _, inter = attn(x, return_attn=True)
    expected = -(DIM_HEAD**-0.5) * (q.unsqueeze(-2) - k.unsqueeze(-3)).pow(2).sum(-1)
    close(inter.logits, expected)
    assert (inter.logits <= 0).all()


def test_cached_decoding_equals_the_full_forward_with_rotary():
    torch.manual_seed(0)
    model = TransformerWrapper(
        num_tokens=11,
        max_seq_len=16,
        attn_layers=Decoder(
            dim=16, depth=2, heads=2, attn_dim_head=8, rotary_pos_emb=True, attn_l2_distance=True
        ),
    ).double()
    tokens = torch.randint(0, 11, (2, 7))
    full = model(tokens)
    _, inter = model(tokens[:, :4], return_intermediates=True)
    steps = [full[:, :4]]
    cache = inter.cache
    for t in range(4, 7):
        logits, inter = model(tokens[:, t : t + 1], cache=cache, return_intermediates=True)
        steps.append(logits)
        cache = inter.cache
    close(torch.cat(steps, dim=1), full)


def test_refused_with_memory_key_values_and_linear_attention():
    with pytest.raises(ValueError, match="attn_num_mem_kv.*attn_l2_distance"):
        Decoder(dim=16, depth=1, attn_l2_distance=True, attn_num_mem_kv=2)
    with pytest.raises(ValueError, match="attn_l2_distance.*attn_linear_attn|attn_linear_attn"):
        Decoder(dim=16, depth=1, attn_l2_distance=True, attn_linear_attn=True)


def test_refused_with_shaw_relative_keys():
    with pytest.raises(ValueError, match="shaw_rel_pos.*attn_l2_distance"):
        Decoder(dim=16, depth=1, attn_l2_distance=True, shaw_rel_pos=True)
