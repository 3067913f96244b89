"""KV cache: cached decoding equals the full forward, for every registered flag.

Invariants: logits of a prefill + single-token steps against an explicit :class:`KVCache` equal
the full causal forward (float64, 1e-9); generation with the cache returns exactly the tokens of
generation without it; a sliding cache equals a full forward with a band mask written here;
cross-attention keys/values are projected once; a model that declares itself uncacheable
falls back to the uncached path with one warning.

Shape legend: b batch, n sequence, j context length, d model dim, v vocabulary.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from flag_models import DIM, build, tokens

from x_attn import KVCache, KVEntry, TransformerWrapper
from x_attn.registry import FLAGS, flag_case
from x_attn.wrappers.autoregressive import AutoregressiveWrapper

NAMES = [case.name for case in FLAGS if case.causal_ok]
ATOL = 1e-9


def self_attention_entries(net: TransformerWrapper) -> list[int]:
    kinds = [t for t in net.attn_layers.types if t in "ac"]
    return [i for i, t in enumerate(kinds) if t == "a"]


@pytest.mark.parametrize("name", NAMES)
def test_cached_logits_equal_full_forward(name: str) -> None:
    net = build(flag_case(name))
    if not AutoregressiveWrapper(net).cacheable:  # declared: generation falls back (see below)
        with pytest.raises(ValueError):
            net(tokens(2, 4), return_cache=True)
        return
    x = tokens(2, 10)
    with torch.no_grad():
        full = net(x)
        logits, cache = net(x[:, :4], return_cache=True)
        steps = [logits]
        for t in range(4, 10):
            logits, cache = net(x[:, t : t + 1], cache=cache, return_cache=True)
            steps.append(logits)
    assert cache.length == 10 + net.num_memory_tokens
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["default", "rotary_pos_emb", "rel_pos_bias", "num_memory_tokens"])
def test_cache_the_x_transformers_way(name: str) -> None:
    """return_intermediates=True, then cache=intermediates.cache on the next call."""
    net, x = build(flag_case(name)), tokens(2, 7)
    with torch.no_grad():
        full = net(x)
        logits, inter = net(x[:, :5], return_intermediates=True)
        for t in range(5, 7):
            logits, inter = net(x[:, t : t + 1], cache=inter.cache, return_intermediates=True)
            torch.testing.assert_close(logits[:, -1], full[:, t], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_generate_with_cache_returns_the_tokens_without(name: str) -> None:
    ar = AutoregressiveWrapper(build(flag_case(name)))
    prompts = tokens(2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # uncacheable flags: tested below
        greedy = ar.generate(prompts, 10, temperature=0.0)
        sampled = ar.generate(prompts, 10, generator=torch.Generator().manual_seed(3))
    assert greedy.shape == (2, 10)
    assert torch.equal(greedy, ar.generate(prompts, 10, temperature=0.0, cache_kv=False))
    again = ar.generate(prompts, 10, cache_kv=False, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sampled, again)


@pytest.mark.parametrize("name", NAMES)
def test_sliding_cache_equals_band_mask_forward(name: str) -> None:
    """Past max_seq_len each query sees the newest window of keys: a band mask over the sequence."""
    window, n = 5, 12
    if not flag_case(name).any_mask:
        pytest.skip(f"{name} applies no band mask (registry: any_mask=False); see test_linear_attn")
    net = build(flag_case(name), max_seq_len=window, relative=True)
    if not AutoregressiveWrapper(net).cacheable:
        pytest.skip(f"declared uncacheable: {AutoregressiveWrapper(net).uncacheable_reason}")
    m = net.num_memory_tokens
    x = tokens(2, n)
    pos = torch.arange(m + n)
    band = (pos.unsqueeze(-1) - pos) < window + m  # key j visible to query i iff i - j < w
    with torch.no_grad():
        reference = net(x, attn_mask=band)
        logits, cache = net(x[:, :3], return_cache=True)
        for t in range(3, n):
            cache.slide(window + m - 1, self_attention_entries(net))
            logits, cache = net(x[:, t : t + 1], cache=cache, return_cache=True)
            torch.testing.assert_close(logits[:, -1], reference[:, t], atol=ATOL, rtol=0)
        assert cache.length == n + m
        unbounded = net(x)
    if flag_case(name).kernel == "window":  # its own window (3 keys) is inside the band
        assert cache.kept < window + m  # and its layers hold only what that window reaches
        return
    assert cache.kept == window + m
    assert not torch.allclose(reference[:, -1], unbounded[:, -1])  # the band did cut keys


def test_sliding_cache_with_a_padded_long_prompt() -> None:
    """A prompt longer than the window, left-padded in a batch: cached == uncached tokens."""
    ar = AutoregressiveWrapper(build(flag_case("alibi_pos_bias"), max_seq_len=6))
    prompts = [tokens(1, 9, seed=4)[0], tokens(1, 2, seed=5)[0]]
    cached = ar.generate(prompts, 12, temperature=0.0)
    assert torch.equal(cached, ar.generate(prompts, 12, temperature=0.0, cache_kv=False))


def test_cross_attention_keys_values_are_computed_once() -> None:
    net = build(flag_case("default"), cross_attend=True)
    ar = AutoregressiveWrapper(net)
    cross = [blk for t, blk in zip(net.attn_layers.types, net.attn_layers.layers) if t == "c"]
    calls = []
    for layer in cross:
        layer["block"].proj.to_k.register_forward_hook(lambda *_: calls.append(1))
    torch.manual_seed(2)
    context = torch.randn(2, 7, DIM, dtype=torch.float64)
    context_mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    kwargs = dict(context=context, context_mask=context_mask, temperature=0.0)
    cached = ar.generate(tokens(2, 3), 6, **kwargs)
    assert len(calls) == len(cross)  # once per cross-attention layer, at the prefill
    calls.clear()
    assert torch.equal(cached, ar.generate(tokens(2, 3), 6, cache_kv=False, **kwargs))
    assert len(calls) == 6 * len(cross)  # the uncached path projects the context every step


def test_uncacheable_model_warns_once_and_decodes_without_cache() -> None:
    net = build(flag_case("rotary_pos_emb"))
    net.attn_layers.layers[0]["block"].uncacheable_reason = "a test feature keeps no keys"
    ar = AutoregressiveWrapper(net)
    assert not ar.cacheable and ar.uncacheable_reason == "a test feature keeps no keys"
    got_cache = []
    net.register_forward_pre_hook(
        lambda mod, args, kw: got_cache.append("cache" in kw or "return_cache" in kw),
        with_kwargs=True,
    )
    with pytest.warns(RuntimeWarning, match="a test feature keeps no keys") as record:
        first = ar.generate(tokens(2, 3), 5, temperature=0.0)
        second = ar.generate(tokens(2, 3), 5, temperature=0.0)
    assert len(record) == 1 and not any(got_cache)
    assert torch.equal(first, second)
    assert torch.equal(first, ar.generate(tokens(2, 3), 5, temperature=0.0, cache_kv=False))


@pytest.mark.parametrize("method", ["generate", "beam_search"])
def test_uncacheable_warning_points_at_the_caller(method: str) -> None:
    net = build(flag_case("default"))
    net.attn_layers.layers[0]["block"].uncacheable_reason = "a test feature keeps no keys"
    with pytest.warns(RuntimeWarning, match="a test feature keeps no keys") as record:
        getattr(AutoregressiveWrapper(net), method)(tokens(1, 3), 2, temperature=0.0)
    assert record[0].filename == __file__


def test_kv_cache_slide_and_select() -> None:
    k = torch.arange(2 * 1 * 6 * 1, dtype=torch.float64).reshape(2, 1, 6, 1)
    ctx = torch.zeros(2, 1, 3, 1)
    mask = torch.tensor([[False, True, True, True, True, True]] * 2)
    cache = KVCache([KVEntry(k, -k), KVEntry(ctx, ctx)], length=6, key_mask=mask)
    cache.slide(4, layers=[0])
    assert cache.length == 6 and cache.dropped == 2 and cache.kept == 4
    assert torch.equal(cache.entries[0].k, k[:, :, 2:]) and torch.equal(
        cache.entries[0].v, -k[:, :, 2:]
    )
    assert cache.entries[1].k.shape[-2] == 3  # cross-attention entry untouched
    assert cache.key_mask.shape == (2, 4) and bool(cache.key_mask.all())
    cache.slide(5, layers=[0])  # nothing to drop
    assert cache.kept == 4
    one = cache.select(torch.tensor([1]))
    assert one.dropped == 2 and one.length == 6 and torch.equal(one.entries[0].k, k[1:, :, 2:])


def test_grow_continues_in_place_only_the_view_it_handed_out() -> None:
    """Another tensor of the same length (a stale or foreign prefix) is copied, never continued
    in the buffer: the view handed out stays intact and each result equals torch.cat."""
    from x_attn.cache.grow import grow

    rows = [torch.full((1, n, 2), float(i)) for i, n in enumerate((3, 1, 1))]
    held, buffer = grow(None, rows[0], rows[1], dim=1)
    kept = held.clone()
    foreign = torch.zeros(1, 4, 2)  # same length as `held`, not the buffer's view
    out, other = grow(buffer, foreign, rows[2], dim=1)
    assert other is not buffer and torch.equal(out, torch.cat((foreign, rows[2]), dim=1))
    assert torch.equal(held, kept)
    again, same = grow(buffer, held, rows[2], dim=1)  # the view handed out: written in place
    assert same is buffer and again.data_ptr() == held.data_ptr()
    assert torch.equal(again, torch.cat(rows, dim=1))


def test_kv_entry_buffers_match_concatenation() -> None:
    """Without autograd, appends write into a growing buffer; the result equals torch.cat."""
    from x_attn.cache import KVEntry

    chunks = [torch.randn(2, 3, n, 4, dtype=torch.float64) for n in (5, 1, 1, 70, 1, 2)]
    entry, earlier = KVEntry(), []
    with torch.no_grad():
        for i, chunk in enumerate(chunks):
            k, v = entry.append(chunk, 2 * chunk)
            earlier.append(k.clone())
            expected = torch.cat(chunks[: i + 1], dim=-2)
            assert torch.equal(k, expected) and torch.equal(v, 2 * expected)
        assert entry._k_buffer is not None and entry._k_buffer.data.shape[-2] > entry.k.shape[-2]
        # a view handed out earlier is never overwritten by later appends
        first_view = KVEntry()
        a, _ = first_view.append(chunks[0], chunks[0])
        b, _ = first_view.append(chunks[1], chunks[1])
        c, _ = first_view.append(chunks[2], chunks[2])
        assert torch.equal(b, torch.cat(chunks[:2], -2)) and c.shape[-2] == 7
        # after a slide the entry holds a shifted view: the next append starts a new buffer
        entry.k, entry.v = entry.k[..., 10:, :], entry.v[..., 10:, :]
        k, _ = entry.append(chunks[1], chunks[1])
        assert torch.equal(k, torch.cat((earlier[-1][..., 10:, :], chunks[1]), dim=-2))
    # with autograd on, appends concatenate and gradients flow to every chunk
    leaf = torch.randn(1, 1, 2, 4, requires_grad=True)
    grad_entry = KVEntry()
    grad_entry.append(leaf, leaf)
    k, _ = grad_entry.append(leaf * 2, leaf)
    k.sum().backward()
    assert torch.equal(leaf.grad, torch.full_like(leaf, 3.0))
