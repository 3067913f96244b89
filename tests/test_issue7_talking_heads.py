"""Issue 7 item 1: talking heads with a per-head attn_mask that empties some heads' rows.

A query row with no visible key (in one head) must contribute nothing, also through the
post-softmax head mixing: otherwise that head's uniform row (future keys included) leaks into
the other heads. Invariants checked on tiny float64 stacks with random mixing matrices:
causality, a key masked for every head has no effect, cached decoding == full forward.

Shape legend: b batch, h heads, n sequence, d model dim.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from x_attn import Decoder, Encoder
from x_attn.cache import KVCache

B, H, N, D = 2, 2, 7, 16
FLAGS = ["attn_pre_talking_heads", "attn_post_talking_heads", "attn_talking_heads"]


def build(flag: str, stack: type = Decoder, seed: int = 0):
    """float64 eval stack; every parameter jittered so the head mixing is far from identity."""
    torch.manual_seed(seed)
    layers = stack(dim=D, depth=2, heads=H, attn_dim_head=8, **{flag: True}).double().eval()
    with torch.no_grad():
        for p in layers.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return layers


def per_head_mask(seed: int = 3) -> Tensor:
    """(b, h, n, n) random mask in which head 0 has empty rows the other head does not."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, H, N, N, generator=g) > 0.3
    mask[:, 0, 2] = False  # head 0 sees nothing from query 2 (both samples)
    mask[1, 0, 5] = False
    mask[:, 1, 2, :2] = True  # the other head sees past keys from the same queries
    mask[1, 1, 5, :3] = True
    return mask


def inputs(seed: int = 5) -> Tensor:
    return torch.randn(B, N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("flag", FLAGS)
def test_per_head_empty_rows_keep_causality(flag):
    layers, mask, x = build(flag), per_head_mask(), inputs()
    out = layers(x, attn_mask=mask)
    for t in range(1, N):
        moved = x.clone()
        moved[:, t] += torch.randn(D, dtype=torch.float64)
        changed = layers(moved, attn_mask=mask)
        torch.testing.assert_close(changed[:, :t], out[:, :t], atol=1e-12, rtol=0)


@pytest.mark.parametrize("stack", [Decoder, Encoder])
@pytest.mark.parametrize("flag", FLAGS)
def test_key_masked_for_every_head_has_no_effect(flag, stack):
    layers, mask, x = build(flag, stack), per_head_mask(), inputs()
    hidden = 4
    mask[..., hidden] = False  # no query of any head may see key 4
    out = layers(x, attn_mask=mask)
    moved = x.clone()
    moved[:, hidden] = torch.randn(B, D, dtype=torch.float64) * 10
    changed = layers(moved, attn_mask=mask)
    others = [i for i in range(N) if i != hidden]
    torch.testing.assert_close(changed[:, others], out[:, others], atol=1e-12, rtol=0)


@pytest.mark.parametrize("flag", FLAGS)
def test_cached_decoding_equals_full_forward_with_per_head_mask(flag):
    layers, mask, x = build(flag), per_head_mask(), inputs()
    full = layers(x, attn_mask=mask)
    prompt = 2
    cache = KVCache.empty(layers.num_attention_layers)
    out, inter = layers(
        x[:, :prompt], attn_mask=mask[:, :, :prompt, :prompt], cache=cache, return_hiddens=True
    )
    steps = [out]
    for t in range(prompt, N):  # a cache is a value: continue from the one each call returns
        step = mask[:, :, t : t + 1, : t + 1]
        out, inter = layers(x[:, t : t + 1], attn_mask=step, cache=inter, return_hiddens=True)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-12, rtol=0)
