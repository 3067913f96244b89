"""Sliding window + global tokens (Longformer 2004.05150): kernel vs a float64 dense reference,
window >= length == full attention, ring-buffer decoding == full forward, refusals."""

from __future__ import annotations

import pytest
import torch
from flag_models import VOCAB, tokens
from reference import reference_attention

import x_attn.kernels.window as window_kernel
from x_attn import Decoder, Encoder, TransformerWrapper
from x_attn.kernels.inputs import AttnInputs
from x_attn.masks.causal import CAUSAL
from x_attn.masks.spec import AttnMask, Span
from x_attn.masks.window import SlidingWindow
from x_attn.per_layer import per_layer

DIMS = dict(dim=16, depth=2, heads=2, attn_dim_head=8)


def window_allowed(i, j, w, d, causal, globals_=()):
    """(i, j) bool written out by hand: key s is among query t's window keys t - m d
    (m = 0 .. w-1, and t + m d when bidirectional), or either one is global."""
    allowed = torch.zeros(i, j, dtype=torch.bool)
    for t in range(i):
        for m in range(w):
            for s in (t - m * d,) if causal else (t - m * d, t + m * d):
                if 0 <= s < j:
                    allowed[t, s] = True
    for g in globals_:  # a global token sees every key and is seen by every query
        allowed[g, :] = allowed[:, g] = True
    if causal:
        allowed &= torch.ones(i, j, dtype=torch.bool).tril()
    return allowed


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a single window, so short sequences cross several block boundaries."""
    monkeypatch.setattr(window_kernel, "MIN_BLOCK", 1)


def qkv(n, heads=2, b=2):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, heads, n, 4, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize(
    ("w", "d", "causal", "globals_"),
    [(3, 1, True, ()), (2, 2, False, ()), (4, 1, True, (0, 6)), (2, 3, False, (5,))],
)
def test_kernel_matches_dense_reference(small_blocks, w, d, causal, globals_):
    n = 13  # not a multiple of any block size used
    q, k, v = qkv(n)
    padding = torch.ones(2, n, dtype=torch.bool)
    padding[1, :2] = False
    bias = torch.randn(2, n, n, dtype=torch.float64)
    rules = ((CAUSAL,) if causal else ()) + (SlidingWindow(w, d, causal, globals_),)
    spec = AttnMask(Span(0, n), Span(0, n), rules, padding)
    for leaf in (q, k, v):
        leaf.requires_grad_(True)
    out = window_kernel.window_attention(AttnInputs(q, k, v, bias=bias, scale=0.5, spec=spec))
    dense = window_allowed(n, n, w, d, causal, globals_) & padding[:, None, None, :]
    ref = reference_attention(q, k, v, mask=dense, bias=bias, scale=0.5)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_per_call_global_tokens_per_batch_row(small_blocks):
    n = 11
    q, k, v = qkv(n)
    marked = torch.zeros(2, n, dtype=torch.bool)
    marked[0, 3], marked[1, 8] = True, True
    rule = SlidingWindow(2, 1, True).with_global_tokens(Span(0, n), marked)
    spec = AttnMask(Span(0, n), Span(0, n), (CAUSAL, rule))
    out = window_kernel.window_attention(AttnInputs(q, k, v, spec=spec))
    for row, g in ((0, 3), (1, 8)):
        dense = window_allowed(n, n, 2, 1, True, (g,))
        ref = reference_attention(*(t[row : row + 1] for t in (q, k, v)), dense, scale=1.0)
        torch.testing.assert_close(out[row : row + 1], ref, rtol=0, atol=1e-12)


def test_window_at_least_length_equals_full_attention():
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    torch.manual_seed(0)
    full = Decoder(**DIMS, rotary_pos_emb=True).double().eval()
    torch.manual_seed(0)
    windowed = Decoder(**DIMS, rotary_pos_emb=True, attn_window_size=9).double().eval()
    with torch.no_grad():
        assert torch.equal(full(x), windowed(x))


def wrapper(seed=0, **layers):
    torch.manual_seed(seed)
    net = TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=64, attn_layers=Decoder(**{**DIMS, **layers})
    )
    return net.double().eval()


@pytest.mark.parametrize(
    "flags",
    [
        dict(attn_window_size=3, rotary_pos_emb=True),
        dict(attn_window_size=2, attn_window_dilation=2, attn_global_tokens=(1, 9)),
        dict(attn_window_size=per_layer((3, None)), alibi_pos_bias=True),
    ],
)
def test_cached_decode_equals_full_forward(small_blocks, flags):
    net = wrapper(**flags)
    x = tokens(2, 23)
    with torch.no_grad():
        full = net(x)
        logits, cache = net(x[:, :11], return_cache=True)  # prefill longer than the window
        steps = [logits]
        for t in range(11, 23):
            step, cache = net(x[:, t : t + 1], cache=cache, return_cache=True)
            steps.append(step)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-9)
    rings = [e for e in cache.entries if e is not None and e.kind == "ring"]
    assert rings
    for entry in rings:  # the reachable tail and the global tokens, nothing more
        assert entry.k.shape[-2] == entry.reach + len(entry.positions)


def test_causal_window_ignores_the_future():
    net = wrapper(attn_window_size=3, attn_global_tokens=(2,))
    x = tokens(1, 12)
    changed = x.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % VOCAB
    with torch.no_grad():
        torch.testing.assert_close(net(changed)[:, :7], net(x)[:, :7], rtol=0, atol=1e-12)


def test_global_mask_equals_global_positions():
    x = tokens(2, 10)
    marked = torch.zeros(2, 10, dtype=torch.bool)
    marked[:, [0, 4]] = True
    fixed = wrapper(attn_window_size=2, attn_global_tokens=(0, 4))
    per_call = wrapper(attn_window_size=2)
    plain = wrapper(attn_window_size=2)
    with torch.no_grad():
        torch.testing.assert_close(per_call(x, global_mask=marked), fixed(x), rtol=0, atol=1e-12)
        assert not torch.allclose(plain(x), fixed(x))


def test_dense_fallbacks_are_explained_and_flash_true_is_refused():
    layers = Decoder(**DIMS, attn_window_size=4, attn_sparse_topk=2)
    assert "manual" in layers.explain()[0] and "dense (i, j) mask" in layers.explain()[0]
    assert "window" in Decoder(**DIMS, attn_window_size=4).explain()[0]
    with pytest.raises(ValueError, match="attn_sparse_topk"):
        Decoder(**DIMS, attn_window_size=4, attn_sparse_topk=2, attn_flash=True)


def test_return_attn_maps_follow_the_window():
    net = Encoder(**DIMS, attn_window_size=2).double().eval()
    x = torch.randn(1, 7, 16, dtype=torch.float64)
    _, inter = net(x, return_hiddens=True, return_attn=True)
    probs = inter.attn_maps[0]
    assert inter.kernels[0] == "manual"
    allowed = window_allowed(7, 7, 2, 1, False)
    assert torch.equal(probs[0, 0] > 0, allowed)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(attn_window_size=0), "attn_window_size"),
        (dict(attn_window_dilation=2), "attn_window_size"),
        (dict(attn_global_tokens=(0,)), "attn_window_size"),
        (dict(attn_window_size=2, attn_global_tokens=(1, 1)), "attn_global_tokens"),
        (dict(attn_window_size=2, attn_window_dilation=0), "attn_window_dilation"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Decoder(**DIMS, **kwargs)


def test_global_mask_refusals():
    x = torch.randn(1, 5, 16)
    marked = torch.zeros(1, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="no layer has a window"):
        Decoder(**DIMS)(x, global_mask=marked)
    with pytest.raises(ValueError, match="global_mask"):
        Decoder(**DIMS, attn_window_size=2)(x, global_mask=marked[:, :3])


def test_a_window_cache_is_a_value():
    """Decoding from a cache leaves it as it was: the same step twice gives the same logits."""
    net = wrapper(attn_window_size=2, attn_global_tokens=(0,))
    x = tokens(1, 9)
    with torch.no_grad():
        _, cache = net(x[:, :6], return_cache=True)
        first, _ = net(x[:, 6:7], cache=cache, return_cache=True)
        net(x[:, 7:8] * 0, cache=cache, return_cache=True)  # another branch from the same cache
        again, _ = net(x[:, 6:7], cache=cache, return_cache=True)
    assert torch.equal(first, again)


BANDED = [  # w, d, causal, n, block, padded, chunk (queries per banded call)
    (3, 1, True, 13, 1, False, 4),  # blocks of 3, chunks of one block, the last one short
    (3, 1, True, 13, 1, True, 7),  # chunks of 2 blocks: left padding crosses a chunk edge
    (2, 2, False, 13, 1, False, 6),  # bidirectional: chunks reach the next chunk's keys
    (5, 1, True, 150, 64, True, 128),  # chunks of 2 blocks of 64, the last one 22 queries
    (5, 1, True, 150, 64, True, 1024),  # one chunk
    (4, 3, False, 70, 8, True, 16),  # dilation 3, blocks of 19, chunks of one block
    (4, 3, False, 70, 8, True, 40),  # chunks of 2 blocks of 19, the last one 32 queries
]


@pytest.mark.parametrize("single_call", [False, True], ids=["recomputed", "single-call"])
@pytest.mark.parametrize(("w", "d", "causal", "n", "block", "padded", "chunk"), BANDED)
def test_banded_path_matches_dense_reference(
    monkeypatch, w, d, causal, n, block, padded, chunk, single_call
):
    """The loop-free path (one span, key padding, no bias or globals) equals the float64
    reference in values and gradients, whether its chunks are recomputed in backward (the
    default with gradients), computed in one call (dropout, torch.compile) or one after another
    without gradients; the per-block loop is made to fail so it is not used."""
    monkeypatch.setattr(window_kernel, "MIN_BLOCK", block)
    monkeypatch.setattr(window_kernel, "CHUNK", chunk)
    monkeypatch.setattr(window_kernel, "_attend", lambda *a: pytest.fail("loop path used"))
    if single_call:
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    q, k, v = qkv(n)
    padding = torch.ones(2, n, dtype=torch.bool)
    padding[1, :5] = False  # left padding: row 1's first queries see no key at all
    rules = ((CAUSAL,) if causal else ()) + (SlidingWindow(w, d, causal),)
    spec = AttnMask(Span(0, n), Span(0, n), rules, padding if padded else None)
    padding |= not padded
    for leaf in (q, k, v):
        leaf.requires_grad_(True)
    out = window_kernel.window_attention(AttnInputs(q, k, v, scale=0.5, spec=spec))
    recomputed = type(out.grad_fn).__name__ == "_RecomputedBandBackward"
    assert recomputed != single_call
    dense = window_allowed(n, n, w, d, causal) & padding[:, None, None, :]
    ref = reference_attention(q, k, v, mask=dense, scale=0.5)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    with torch.no_grad():
        again = window_kernel.window_attention(AttnInputs(q, k, v, scale=0.5, spec=spec))
    torch.testing.assert_close(again, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("w", "d", "causal", "chunk"), [(3, 1, True, 4), (2, 2, False, 6)])
def test_recomputed_band_gradcheck(monkeypatch, w, d, causal, chunk):
    """torch.autograd.gradcheck of the chunk-recomputing autograd function (float64, several
    chunks, left padding): its gradients against finite differences."""
    monkeypatch.setattr(window_kernel, "MIN_BLOCK", 1)
    monkeypatch.setattr(window_kernel, "CHUNK", chunk)
    n = 11
    q, k, v = (x[:, :1, :, :3].clone().requires_grad_() for x in qkv(n))
    padding = torch.ones(2, n, dtype=torch.bool)
    padding[1, :2] = False
    rules = ((CAUSAL,) if causal else ()) + (SlidingWindow(w, d, causal),)
    spec = AttnMask(Span(0, n), Span(0, n), rules, padding)

    def attend(q, k, v):
        out = window_kernel.window_attention(AttnInputs(q, k, v, scale=0.7, spec=spec))
        assert type(out.grad_fn).__name__ == "_RecomputedBandBackward"
        return out

    assert torch.autograd.gradcheck(attend, (q, k, v))


@pytest.mark.parametrize(
    "flag",
    [
        dict(cross_attn_window_size=2),
        dict(cross_attn_sparse_pattern="strided"),
        dict(cross_attn_bigbird=True),
    ],
)
def test_cross_attention_position_masks_are_refused(flag):
    """A position mask cannot apply to a context (it used to be accepted and dropped)."""
    name = next(iter(flag))
    with pytest.raises(ValueError, match=f"{name}.*self-attention layers"):
        Decoder(**DIMS, cross_attend=True, **flag)
