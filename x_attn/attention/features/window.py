"""Sliding-window attention with global tokens as a layer feature (Longformer, arXiv 2004.05150).

``attn_window_size=w`` gives each self-attention layer the window rule of
:mod:`x_attn.masks.window` (causal in a causal stack, both ways otherwise, the Mistral-style
causal window of arXiv 2310.06825 being the causal case), ``attn_window_dilation=d`` spaces
the window keys, ``attn_global_tokens=(0, ...)`` names global positions (per call: the stack's
``global_mask``). The layer runs the blockwise kernel (:mod:`x_attn.kernels.window`) and keeps
a bounded cache (:class:`x_attn.cache.ring.RingEntry`). Cross-attention layers are not
windowed (a context has no positions). Per-layer mixing: ``per_layer((w, w, w, None))``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from x_attn.attention.features.spec import FeatureContext, FeatureSpec
from x_attn.cache.entry import CacheEntry
from x_attn.cache.ring import RingEntry
from x_attn.masks.window import SlidingWindow


def _rule(ctx: FeatureContext) -> SlidingWindow:
    cfg = ctx.config
    if cfg.global_tokens and ctx.stack is not None and ctx.stack.shaw_rel_pos:
        raise ValueError(
            f"{ctx.flag('global_tokens')} with shaw_rel_pos: a decoding window cache keeps the "
            "global keys in front of the window's keys, out of position order, and Shaw's "
            "relative embeddings are laid out over one contiguous span of keys; drop one of them"
        )
    return SlidingWindow(cfg.window_size, cfg.window_dilation, ctx.causal, cfg.global_tokens)


def _entry(ctx: FeatureContext) -> Callable[[], CacheEntry]:
    return partial(RingEntry, _rule(ctx).back, ctx.config.global_tokens)


WINDOW_SPEC = FeatureSpec(
    "window_size",
    "2004.05150",
    "mask",
    enabled=lambda ctx: ctx.config.window_size is not None and ctx.prefix == "attn_",
    slot="cache",
    rules=lambda ctx: (_rule(ctx),),
    cache_entry=_entry,
    needs=("fast:window",),
    reads_neighbours=True,  # the window counts slots: padding inside it would take places
)
