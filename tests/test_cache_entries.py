"""Per-layer cache entries: each layer keeps its own keys, with their positions and padding.

A layer whose entry keeps only a window of keys sits next to a full layer in one stack; cached
decoding equals the full forward with the window written as a dense mask here.

Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

import pytest
import torch
from flag_models import DIM, build, tokens

from x_attn.cache import ContextEntry, KeyRows, KVCache, KVEntry
from x_attn.masks import MaskRule, Span
from x_attn.positional.context import NO_POSITIONS
from x_attn.registry import flag_case


class _Window(MaskRule):
    kind = "window"

    def __init__(self, w: int) -> None:
        self.w = w

    def allows(self, q_pos, k_pos):
        return q_pos - k_pos < self.w


class _WindowEntry(KVEntry):
    """Keeps the newest w - 1 keys between calls (all a window of w needs)."""

    def __init__(self, w: int) -> None:
        super().__init__()
        self.w = w

    def update(self, new, project):
        self.keep_newest(self.w - 1)
        return super().update(new, project)


def _window_first_layer(net, w: int) -> None:
    block = net.attn_layers.layers[0]["block"]
    block.rules = (*block.rules, _Window(w))
    block.new_entry = lambda: _WindowEntry(w)


@pytest.mark.parametrize("name", ["rel_pos_bias", "rotary_pos_emb", "alibi_pos_bias"])
def test_window_layer_next_to_full_layer_decodes_like_the_full_forward(name: str) -> None:
    w, n = 3, 9
    net, plain = build(flag_case(name)), build(flag_case(name))
    _window_first_layer(net, w)
    x = tokens(2, n)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, :2] = False  # left padding
    with torch.no_grad():
        full = net(x, mask=mask)
        assert not torch.allclose(full, plain(x, mask=mask))  # the window cuts keys
        logits, cache = net(x[:, :4], mask=mask[:, :4], return_cache=True)
        steps = [logits]
        for t in range(4, n):
            logits, cache = net(x[:, t : t + 1], cache=cache, return_cache=True)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-9, rtol=0)
    window, whole = cache.entries
    assert window.held == Span(n - w, n) and whole.held == Span(0, n)
    assert torch.equal(whole.key_mask, mask) and torch.equal(window.key_mask, mask[:, -w:])
    assert cache.kept == n and cache.first_position == 0  # the full layer holds position 0


def test_each_layer_creates_its_own_entry() -> None:
    net = build(flag_case("default"), cross_attend=True)
    cache = net.attn_layers.new_cache()
    kinds = [type(e) for e in cache.entries]
    assert kinds == [KVEntry, ContextEntry, KVEntry, ContextEntry]
    context = torch.randn(2, 5, DIM, dtype=torch.float64)
    with torch.no_grad():
        _, filled = net(tokens(2, 3), context=context, cache=KVCache.empty(4), return_cache=True)
    assert [type(e) for e in filled.entries] == kinds
    assert filled.entries[1].held == Span(0, 5) and filled.entries[0].held == Span(0, 3)


def test_mismatched_use_is_refused() -> None:
    entry = KVEntry()
    rows = torch.zeros(1, 2, 4)
    project = lambda x, pos: (x[:, None], x[:, None])  # noqa: E731  (b j d) -> (b 1 j d)
    entry.update(KeyRows(rows, Span(0, 2), None, NO_POSITIONS), project)
    with pytest.raises(ValueError, match="holds positions up to 1.*start at position 5"):
        entry.update(KeyRows(rows, Span(5, 7), None, NO_POSITIONS), project)
    context = ContextEntry()
    context.update(KeyRows(rows, Span(0, 2), None, NO_POSITIONS), project)
    with pytest.raises(ValueError, match="context of 2 tokens.*has 3"):
        context.update(KeyRows(torch.zeros(1, 3, 4), Span(0, 3), None, NO_POSITIONS), project)
    net = build(flag_case("default"))
    with pytest.raises(ValueError, match="'cache' holds 3 attention layers, but this stack has 2"):
        net(tokens(2, 3), cache=KVCache.empty(3))


def test_padding_joins_the_entry_without_copying_the_held_keys() -> None:
    entry = KVEntry()
    project = lambda x, pos: (x[:, None], x[:, None])  # noqa: E731
    pad = torch.tensor([[False, True, True], [True, True, True]])
    with torch.no_grad():
        entry.update(KeyRows(torch.zeros(2, 3, 4), Span(0, 3), pad, NO_POSITIONS), project)
        for p in range(3, 6):
            held = entry.update(
                KeyRows(torch.ones(2, 1, 4), Span(p, p + 1), None, NO_POSITIONS), project
            )
    expected = torch.cat((pad, torch.ones(2, 3, dtype=torch.bool)), dim=1)
    assert torch.equal(held.mask, expected) and held.span == Span(0, 6)
    assert entry._mask_buffer.data.shape[-1] > 6  # grown geometrically, written in place
