"""The KV cache entries of an :class:`x_attn.layers.stack.AttentionLayers` stack.

One entry per attention run (self-attention keys/values, or a cross-attention run's projected
context), then one per token-shifted run (its last inputs), in run order: the factories that
create them, an empty cache, and the entries of a given cache (created on first use).
"""

from __future__ import annotations

from typing import Any

from x_attn.cache import CacheEntry, KVCache

Order = tuple[int, ...]


def shift_runs(stack: Any, order: Order) -> list[int]:
    """The module indices of ``order`` whose layer shifts tokens (one cache entry each)."""
    if not hasattr(stack, "_shifted"):  # the modules with token shifting (fixed once built)
        shifted = frozenset(i for i, lay in enumerate(stack.layers) if lay.shift is not None)
        object.__setattr__(stack, "_shifted", shifted)
    return [i for i in order if i in stack._shifted] if stack._shifted else []


def entry_factories(stack: Any, order: Order) -> list:
    """The cache-entry factory of every attention run, then of every shifted run."""
    runs = [stack.layers[i] for i in order]
    attn = [
        layer.block.new_cache_entry if layer.kind == "a" else layer.block.new_context_entry
        for layer in runs
        if layer.kind in "ac"
    ]
    return attn + [layer.shift.new_entry for layer in runs if layer.shift is not None]


def empty_cache(stack: Any) -> KVCache:
    """An empty cache with the entry each attention (and shifted) run creates for itself."""
    return KVCache(entries=[create() for create in entry_factories(stack, stack.plan.order)])


def cache_entries(stack: Any, cache: KVCache | None, order: Order) -> list[CacheEntry | None]:
    """Each run's entry of ``cache`` (created on first use), or Nones."""
    if cache is not None and all(entry is not None for entry in cache.entries):
        return cache.entries  # a decode step: every layer has its entry already
    factories = entry_factories(stack, order)
    if cache is None:
        return [None] * len(factories)
    for i, create in enumerate(factories):  # its length is checked already
        cache.entry(i, create)
    return cache.entries
