"""The inputs of one stack forward, checked at the boundary: context and masks, a per-call
causality override, additional self-attention key/values.

Shape legend: b batch, n sequence, j context length, k keys self-attention holds, d model dim.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from x_attn.attention.additional_kv import route_additional_kv
from x_attn.validation_inputs import check_bool_mask, check_float_input, normalize_attn_mask


def check_stack_inputs(
    stack: Any, x: Tensor, context, mask, context_mask, attn_mask, k_len: int
) -> Tensor | None:
    """Check the forward's inputs; returns attn_mask as (b|1, h|1, n, k_len) or None."""
    owner = type(stack).__name__
    b, n = x.shape[:2]
    if stack.cross_attend and context is None:
        raise ValueError(f"{owner} cross-attends: pass context=(batch, context_len, dim)")
    if not stack.cross_attend and context is not None:
        raise ValueError(
            f"{owner} does not cross-attend, but 'context' was given; build it with "
            "cross_attend=True"
        )
    if not stack.cross_attend and context_mask is not None:
        raise ValueError("'context_mask' given to a stack that does not cross-attend")
    check_bool_mask("mask", mask, (b, n), "batch x sequence, True = real token")
    if context is not None:
        width = stack.config.cross_attn.dim_context or stack.dim
        if isinstance(context, Tensor) and context.ndim == 3 and context.shape[-1] != width:
            raise ValueError(
                f"{owner}: 'context' has width {context.shape[-1]}, but the cross-attention "
                f"layers read width {width}; build the stack with "
                f"cross_attn_dim_context={context.shape[-1]}"
            )
        check_float_input("context", context, width, owner)
        if context.shape[0] != b:
            raise ValueError(f"'context' batch {context.shape[0]} != input batch {b}")
        check_bool_mask(
            "context_mask", context_mask, tuple(context.shape[:2]), "batch x context length"
        )
    return normalize_attn_mask(attn_mask, b, stack.config.heads, n, k_len)


def check_causal_override(causal: Any, stack_causal: bool, cached: bool) -> None:
    """``causal=`` of one call: a bool (or None), and never against a cache's causality."""
    if causal is None:
        return
    if not isinstance(causal, bool):
        raise TypeError(f"'causal' must be True, False or None, got {causal!r}")
    if cached and causal != stack_causal:
        raise ValueError(
            f"causal={causal} with a KV cache: a cache holds the keys of a "
            f"{'causal' if stack_causal else 'bidirectional'} stack, whose past outputs "
            "would change; drop causal= when decoding with a cache"
        )


def additional_kv_per_layer(
    kvs: Any, kv_mask: Tensor | None, layers: int, detach: bool, to_top: bool, owner: str
) -> list[tuple[Tensor, Tensor] | None] | None:
    """One (k, v) or None per self-attention layer, or None when no key/values were given.

    ``kvs``: a list of pairs, or the intermediates of a model run with a KV cache (its
    self-attention keys and values).
    """
    if kvs is None:
        if kv_mask is not None:
            raise ValueError(
                "'additional_kv_mask' was given without self_attn_additional_kv; pass both, "
                "or drop the mask"
            )
        return None
    if not isinstance(kvs, (list, tuple)) and hasattr(kvs, "cache"):  # LayerIntermediates
        if kvs.cache is None:
            raise ValueError(
                "self_attn_additional_kv: these intermediates hold no KV cache; run the "
                "source model with return_intermediates=True (or return_cache=True)"
            )
        kvs = [(e.k, e.v) for e in kvs.cache.entries if getattr(e, "kind", "") == "kv"]
    return route_additional_kv(kvs, layers, detach, to_top, owner)


def context_residuals_per_layer(
    residuals: Any, context: Tensor | None, runs: int, owner: str
) -> list[Tensor | None] | None:
    """``cross_attn_kv_residuals``: one (b, j, dc) tensor (or None) per cross-attention run,
    added to the context that run's keys and values read. Given as a list / tuple or one
    (runs, b, j, dc) tensor; None when not given."""
    if residuals is None:
        return None
    if context is None:
        raise ValueError(
            f"{owner}: 'cross_attn_kv_residuals' is added to the context of the cross-attention "
            "layers; pass context= as well (and build the stack with cross_attend=True)"
        )
    if isinstance(residuals, Tensor):
        if residuals.ndim != 4:
            raise ValueError(
                f"{owner}: 'cross_attn_kv_residuals' as one tensor must be (layers, batch, "
                f"context_len, dim_context), got shape {tuple(residuals.shape)}"
            )
        residuals = list(residuals.unbind(0))
    if not isinstance(residuals, (list, tuple)):
        raise TypeError(
            f"{owner}: 'cross_attn_kv_residuals' must be a tensor or a list of tensors, got "
            f"{type(residuals).__name__}"
        )
    if len(residuals) != runs:
        raise ValueError(
            f"{owner}: 'cross_attn_kv_residuals' has {len(residuals)} entries, but this call "
            f"runs {runs} cross-attention layers; give one per layer (None for none)"
        )
    for r in residuals:
        if r is not None and (not isinstance(r, Tensor) or r.shape != context.shape):
            shape = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
            raise ValueError(
                f"{owner}: each of 'cross_attn_kv_residuals' must have the context's shape "
                f"{tuple(context.shape)}, got {shape}"
            )
    return list(residuals)
