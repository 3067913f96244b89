"""Checks of a stack forward's per-call options against what the stack was built with, and
the cache the forward works on.

Each refusal names the argument, the flag it conflicts with and the fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from x_attn.cache import KVCache
from x_attn.cache.kv_cache import stale_loop_message
from x_attn.layers.intermediates import LayerIntermediates
from x_attn.validation_inputs import check_bool_mask, check_cache

if TYPE_CHECKING:
    from x_attn.layers.stack import AttentionLayers


def run_order(
    stack: AttentionLayers, execute_order: Any, repeat_blocks: Any, mems: Any, cache: Any
) -> tuple[int, ...]:
    """The module indices this call runs: the built order, or a per-call override."""
    owner = type(stack).__name__
    if execute_order is None and repeat_blocks is None:
        return stack.plan.order
    if execute_order is not None and repeat_blocks is not None:
        raise ValueError(f"{owner}: pass layers_execute_order or repeat_blocks, not both")
    if mems is not None or cache is not None or stack.reversible is not None:
        raise ValueError(
            f"{owner}: a per-call layers_execute_order / repeat_blocks changes which layers "
            "run, so the cache entries and mems of the built order do not fit (nor does the "
            "reversible stack); set layers_execute_order at construction instead"
        )
    if repeat_blocks is not None:
        return stack.plan.repeat(repeat_blocks, owner)
    return stack.plan.check_order(execute_order, "layers_execute_order", owner)


def check_run_inputs(
    stack: AttentionLayers,
    x: Tensor,
    mems: list[Tensor] | None,
    cache: KVCache | None,
    causal: Any,
    order: tuple[int, ...],
) -> None:
    """Refuse per-call options that cannot work with how the stack was built."""
    owner = type(stack).__name__
    if causal is not None and not isinstance(causal, bool):
        raise TypeError(f"{owner}: 'causal' must be True, False or None, got {causal!r}")
    if causal is not None and stack.reversible is not None:
        raise ValueError(f"{owner}: a per-call 'causal' is not supported by reversible=True")
    if causal is False and cache is not None and stack.causal:
        raise ValueError(
            f"{owner}: causal=False with a KV cache: cached keys were computed causally and "
            "new keys would be missed by earlier queries; run without the cache"
        )
    training = stack.training and cache is not None
    if training and any(stack.layers[i].dropout > 0 for i in order):
        raise ValueError(
            f"{owner}: layer_dropout skips layers in training mode, so a KV cache would miss "
            "their keys; decode in eval mode (model.eval())"
        )
    if mems is not None and stack.mems_unsupported_reason is not None:
        raise ValueError(f"{owner}: 'mems' cannot be used: {stack.mems_unsupported_reason}")


def working_cache(
    stack: AttentionLayers,
    cache: Any,
    b: int,
    return_hiddens: bool,
    order: tuple[int, ...],
    causal: bool | None = None,
) -> KVCache | None:
    """The cache a forward updates: a fork of the one given, or a new one.

    A :class:`LayerIntermediates` stands for its cache (x-transformers passes the
    intermediates back). Without a cache, ``return_hiddens=True`` on a causal stack that can
    cache starts one, so the intermediates can be continued (not when this call runs another
    order than the built one, or may skip layers: the entries would not fit; nor when this
    call's ``causal=False`` overrides the stack's: its keys would not continue a causal
    sequence).
    """
    owner = type(stack).__name__
    if isinstance(cache, LayerIntermediates):
        cache = cache.cache
        if cache is None:
            raise ValueError(
                f"{owner}: the intermediates passed as 'cache' hold no cache (this stack is "
                "not causal or cannot cache); pass a KVCache"
            )
    check_cache(cache, stack.num_cache_entries, b, owner)
    reason = stack.uncacheable_reason
    if cache is not None and reason is not None:
        raise ValueError(f"{owner}: this stack cannot use a 'cache': {reason}")
    if cache is not None and not return_hiddens:
        raise ValueError(stale_loop_message(owner, "return_hiddens=True"))
    if cache is not None:
        return cache.fork()
    skips = stack.training and any(layer.dropout > 0 for layer in stack.layers)
    fits = order == stack.plan.order and not skips
    if return_hiddens and stack.causal and causal is not False and reason is None and fits:
        return stack.new_cache()
    return None


def check_global_tokens(
    stack: AttentionLayers, x: Tensor, global_mask: Any, mask: Tensor | None, cache: Any
) -> None:
    """Global tokens of the sliding-window layers: a per-call ``global_mask`` (b, n) needs a
    window layer and no cache; ``attn_global_tokens`` (absolute slots) refuse left padding,
    which would shift them in the padded rows (right padding shifts nothing)."""
    owner = type(stack).__name__
    blocks = [layer.block for layer in stack.layers if layer.kind == "a"]
    if global_mask is not None:
        b, n = x.shape[:2]
        check_bool_mask("global_mask", global_mask, (b, n), "batch x sequence, True = global")
        if not any(blk.takes_global_tokens for blk in blocks):
            raise ValueError(
                f"{owner}: global_mask marks global tokens of sliding-window layers, but no "
                "layer has a window (attn_window_size), so every token already sees every key; "
                "drop global_mask"
            )
        if cache is not None:
            raise ValueError(
                f"{owner}: global_mask is for calls without a KV cache; to decode with a cache, "
                "give the global positions at construction (attn_global_tokens)"
            )
    if mask is None or not bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        return
    if any(blk.takes_global_tokens and blk.config.global_tokens for blk in blocks):
        raise ValueError(
            f"{owner}: attn_global_tokens names absolute positions, and the left padding in "
            "'mask' would shift them in the padded rows; pass the global tokens per call as "
            "global_mask (without a cache), or pad on the right"
        )
    anchored = [r for blk in blocks for r in blk.rules if r.slot_anchored]
    if anchored:
        raise ValueError(
            f"{owner}: the {type(anchored[0]).__name__} block pattern (attn_sparse_pattern="
            "'fixed' / attn_bigbird) is anchored at absolute positions, and the left padding "
            "in 'mask' would move the padded rows' tokens across its block boundaries; pad on "
            "the right"
        )
