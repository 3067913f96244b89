"""Caches for incremental decoding (DESIGN.md sections 5 and 8).

A :class:`KVCache` holds one :class:`CacheEntry` per attention layer of a stack, created by the
layer: :class:`KVEntry` (self-attention keys and values, stored after rotary rotation),
:class:`LatentEntry` (multi-head latent attention: a latent and rotary keys per token) or
:class:`ContextEntry` (a cross-attention context projected once), possibly wrapped (an
:class:`EntryWrapper`, e.g. :class:`x_attn.cache.query_tail.QueryTailEntry`) by a feature that
keeps more state next to it. :class:`Mems` are Transformer-XL memories with their padding.
"""

from x_attn.cache.context import ContextEntry
from x_attn.cache.entry import CacheEntry, EntryWrapper, HeldKeys, KeyRows
from x_attn.cache.kv import KVEntry
from x_attn.cache.kv_cache import KVCache
from x_attn.cache.latent import LatentEntry
from x_attn.cache.mems import Mems

__all__ = [
    "CacheEntry",
    "ContextEntry",
    "EntryWrapper",
    "HeldKeys",
    "KVCache",
    "KVEntry",
    "KeyRows",
    "LatentEntry",
    "Mems",
]
