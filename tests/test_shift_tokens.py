"""Token shifting: the chunk shifts written out by hand, and exactness under cache, mems, padding.

x-transformers' definition: a layer with ``shift_tokens = s`` splits its normed input into
``len(amounts)`` chunks of ``d // len(amounts)`` features and moves chunk k by ``amounts[k]``
positions (``0..s`` causal, ``-s..s`` otherwise), zeros outside the sequence, padded positions as
zeros. The reference below indexes positions directly (no padding / concatenation tricks).

Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

import pytest
import torch
from flag_models import jittered, prefill_then_steps
from torch import Tensor

from x_attn import Decoder, Encoder, TransformerWrapper
from x_attn.layers.shift import ShiftTokens

D, B, N, V = 12, 2, 7, 13
SMALL = dict(dim=D, heads=2, attn_dim_head=6, ff_mult=2)


def rand(*shape: int, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def tokens(b: int, n: int, seed: int = 3) -> Tensor:
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(seed))


def shift_by_hand(x: Tensor, amounts, mask: Tensor | None = None) -> Tensor:
    if mask is not None:
        x = x * mask[..., None]
    b, n, d = x.shape
    width = d // len(amounts)
    out = x.clone()
    for k, a in enumerate(amounts):
        cols = slice(k * width, (k + 1) * width)
        for t in range(n):
            src = t - a
            out[:, t, cols] = x[:, src, cols] if 0 <= src < n else 0.0
    return out


@pytest.mark.parametrize("amounts", [(0, 1, 2), (-1, 0, 1), (0, 3), (-2, -1, 0, 1, 2)])
def test_shift_matches_the_definition(amounts):
    x = rand(B, N, 11)  # 11 // len(amounts) leaves some features in place
    torch.testing.assert_close(ShiftTokens(amounts)(x), shift_by_hand(x, amounts), rtol=0, atol=0)


@pytest.mark.parametrize("stack_cls, amounts", [(Decoder, (0, 1)), (Encoder, (-1, 0, 1))])
def test_stack_shifts_every_normed_layer_input(stack_cls, amounts):
    stack = jittered(stack_cls(depth=1, **SMALL, shift_tokens=1))
    x, mask = rand(B, N, D), torch.ones(B, N, dtype=torch.bool)
    mask[0, -2:] = False
    mask[1, 0] = False
    out = stack(x, mask=mask)
    h = x
    for layer in stack.layers:
        inp = shift_by_hand(layer.norm(h), amounts, mask)
        if layer.kind == "a":
            h = h + layer.block(inp, mask=mask)
        else:
            h = h + layer.block(inp)
    torch.testing.assert_close(out, stack.final_norm(h), rtol=1e-10, atol=1e-10)


def test_per_layer_shift_tokens():
    stack = Decoder(depth=2, **SMALL, shift_tokens=(0, 2, 1, 0))
    assert [layer.shift and layer.shift.amounts for layer in stack.layers] == [
        None,
        (0, 1, 2),
        (0, 1),
        None,
    ]


def lm(shift, max_mem_len: int = 0, **flags) -> TransformerWrapper:
    torch.manual_seed(0)
    layers = Decoder(depth=2, **SMALL, shift_tokens=shift, rotary_pos_emb=True, **flags)
    net = TransformerWrapper(
        num_tokens=V, max_seq_len=32, attn_layers=layers, max_mem_len=max_mem_len
    )
    return jittered(net)


@pytest.mark.parametrize("prompt", [1, 2, 5])
def test_cached_decoding_equals_the_full_forward(prompt):
    net, x = lm(2), tokens(B, 10)
    steps, cache = prefill_then_steps(net, x, prompt)
    assert sum(e.kind == "shift" for e in cache.entries) == 4
    torch.testing.assert_close(steps, net(x), rtol=0, atol=1e-9)


def test_cache_select_keeps_the_shift_rows_of_the_rows_kept():
    net, x = lm(1), tokens(3, 8)
    full = net(x)
    _, cache = net(x[:, :5], return_cache=True)
    cache = cache.select(torch.tensor([2, 0]))
    step, _ = net(x[[2, 0], 5:6], cache=cache, return_cache=True)
    torch.testing.assert_close(step[:, 0], full[[2, 0], 5], rtol=0, atol=1e-9)


def test_left_padded_prompt_decodes_like_the_unpadded_one():
    """Relative positions: a left-padded row must decode exactly as the same row alone."""
    net, x = lm(2), tokens(1, 8)
    padded = torch.cat((torch.zeros(1, 3, dtype=torch.long), x), dim=1)
    mask = torch.ones(1, 11, dtype=torch.bool)
    mask[:, :3] = False
    out_pad, cache_pad = net(padded[:, :7], mask=mask[:, :7], return_cache=True)
    out, cache = net(x[:, :4], return_cache=True)
    torch.testing.assert_close(out_pad[:, 3:], out, rtol=0, atol=1e-9)
    for t in range(4, 8):
        a, cache_pad = net(x[:, t : t + 1], cache=cache_pad, return_cache=True)
        b, cache = net(x[:, t : t + 1], cache=cache, return_cache=True)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_mems_equal_one_pass_when_only_self_attention_shifts():
    net, x = lm((1, 0, 2, 0), max_mem_len=64), tokens(B, 12)
    full, mems, outs = net(x), None, []
    for start, end in ((0, 5), (5, 9), (9, 12)):
        out, mems = net(x[:, start:end], mems=mems, return_mems=True)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=0, atol=1e-9)


def test_cached_decode_after_padded_mems_equals_one_pass():
    """Mems from a left-padded segment (row 0: one real row) enter the shift as zeros where
    padded, as the padded rows of a single pass do; a cache then takes the mems in once."""
    net, x = lm((2, 0, 1, 0), max_mem_len=64), tokens(B, 10)
    first = torch.ones(B, 4, dtype=torch.bool)
    first[0, :3] = False
    seg = x[:, 4:]
    with torch.no_grad():
        _, mems = net(x[:, :4], mask=first, return_mems=True)
        steps, _ = prefill_then_steps(net, seg, 2, first=dict(mems=mems))
        one_pass = net(x, mask=torch.cat((first, torch.ones_like(seg, dtype=torch.bool)), 1))
    torch.testing.assert_close(steps, one_pass[:, 4:], rtol=0, atol=1e-9)


def test_memory_tokens_before_left_padding_are_refused():
    """Padding between the memory tokens and the row would be read where the row alone reads
    a memory token: refused, like Multi-Token Attention; right padding is no gap."""
    torch.manual_seed(0)
    layers = Decoder(depth=1, **SMALL, shift_tokens=1, rotary_pos_emb=True)
    net = TransformerWrapper(num_tokens=V, max_seq_len=16, attn_layers=layers, num_memory_tokens=2)
    x, mask = tokens(B, 6), torch.ones(B, 6, dtype=torch.bool)
    mask[0, :2] = False
    with pytest.raises(ValueError, match=r"\['shift_tokens'\] mix neighbouring"):
        net(x, mask=mask)
    net(x, mask=mask.flip(-1))


def test_what_shifting_cannot_do_is_refused():
    with pytest.raises(ValueError, match="max_mem_len.*shift_tokens on a feed-forward"):
        lm(1, max_mem_len=8)
    stack = Decoder(depth=1, **SMALL, shift_tokens=1)
    with pytest.raises(ValueError, match="'mems' cannot be used"):
        stack(rand(B, N, D), mems=[rand(B, 2, D)])
    assert "non-causal" in Encoder(depth=1, **SMALL, shift_tokens=1).uncacheable_reason
    with pytest.raises(ValueError, match="splits dim=2 into 3 chunks"):
        Encoder(dim=2, depth=1, heads=1, attn_dim_head=4, shift_tokens=1)
    with pytest.raises(ValueError, match="shift_tokens"):
        Decoder(depth=1, **SMALL, shift_tokens=-1)
