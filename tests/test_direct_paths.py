"""Shortcuts of the decode step give what the general path gives.

* A plain attention layer whose call hides no key runs fused SDPA directly
  (:func:`x_attn.kernels.sdpa.unmasked_sdpa`): checked against the float64 reference, and
  refused (None) whenever the general path would do more (a mask, a bias, dropout).
* A gated feed-forward on a few rows runs one (d -> 2e) matmul: it equals the two-matmul
  path of many rows, row by row.
* Greedy decoding with the KV cache (every step takes both shortcuts) equals full forwards.
"""

from __future__ import annotations

import pytest
import torch
from reference import reference_attention

from x_attn import AutoregressiveWrapper, Decoder, TransformerWrapper
from x_attn.kernels.sdpa import unmasked_sdpa
from x_attn.layers.feedforward import FeedForward
from x_attn.masks.causal import CAUSAL
from x_attn.masks.spec import AttnMask, Span


def _qkv(heads: int = 4, kv_heads: int = 2, i: int = 1, j: int = 7):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, heads, i, 8, generator=g)
    k, v = (torch.randn(2, kv_heads, j, 8, generator=g) for _ in range(2))
    return q, k, v


def test_unmasked_sdpa_is_softmax_attention_over_every_key():
    q, k, v = _qkv()
    spec = AttnMask(Span(6, 7), Span(0, 7), (CAUSAL,))  # the newest query sees every key
    out = unmasked_sdpa(q, k, v, None, 0.0, 0.3, spec)
    expected = reference_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


def test_unmasked_sdpa_declines_what_it_cannot_do_alone():
    q, k, v = _qkv(i=3)
    hides = AttnMask(Span(4, 7), Span(0, 7), (CAUSAL,))  # earlier queries miss later keys
    assert not hides.hides_nothing()
    assert unmasked_sdpa(q, k, v, None, 0.0, 0.3, hides) is None
    free = AttnMask(Span(0, 3), Span(0, 7), ())
    assert unmasked_sdpa(q, k, v, torch.zeros(1, 1, 3, 7), 0.0, 0.3, free) is None
    assert unmasked_sdpa(q, k, v, None, 0.1, 0.3, free) is None
    assert unmasked_sdpa(q, k, v[..., :4], None, 0.0, 0.3, free) is None


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_glu_on_few_rows_equals_the_many_row_path(rows):
    torch.manual_seed(0)
    ff = FeedForward(16, glu=True, swish=True).eval()
    x = torch.randn(1, 40, 16)  # 40 rows: the two-matmul path
    many = ff(x)
    few = ff(x[:, :rows])  # one wide matmul
    torch.testing.assert_close(few, many[:, :rows], rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(ff(x[:, :rows]), many[:, :rows], rtol=1e-6, atol=1e-6)


def test_cached_greedy_decoding_equals_full_forwards():
    torch.manual_seed(0)
    layers = Decoder(dim=32, depth=2, heads=4, attn_kv_heads=2, rotary_pos_emb=True, ff_glu=True)
    model = TransformerWrapper(num_tokens=40, max_seq_len=64, attn_layers=layers).eval()
    prompt = torch.randint(0, 40, (2, 5))
    out = AutoregressiveWrapper(model).generate(prompt, 8, temperature=0.0, cache_kv=True)
    seq = prompt
    with torch.no_grad():
        for _ in range(8):
            seq = torch.cat((seq, model(seq)[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(out, seq[:, 5:])
