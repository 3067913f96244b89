"""One :class:`x_attn.layers.stack.AttentionLayers` forward, in steps.

1. :func:`checked_order`: ``x`` and the run order checked, with the inputs that depend on it
   (mems, cache, causal, global tokens);
2. :func:`checked_mems`: the length of Transformer-XL memories (they join a cache only at
   its first call);
3. :func:`per_run_inputs`: the inputs given one per run of a kind (additional self-attention
   key/values, cross-attention context residuals, ff_deep_embed scales);
4. :func:`position_context`: the positional tables from the oldest position a layer holds on;
5. :func:`refuse_reversible_state` (reversible stacks keep no per-layer state) or
   :func:`stack_state`: the state the layer loop (:mod:`x_attn.layers.run`) reads that comes
   from the stack itself.

Shape legend: b batch, n sequence, d model dim, m memory length, j context length.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from x_attn.cache import KVCache
from x_attn.layers.deep_embed import ff_scales
from x_attn.layers.reinject import injection
from x_attn.layers.run import start_dual
from x_attn.layers.run_checks import check_global_tokens, check_run_inputs, run_order
from x_attn.layers.stack_cache import cache_entries
from x_attn.layers.stack_inputs import additional_kv_per_layer, context_residuals_per_layer
from x_attn.positional.context import PositionContext
from x_attn.positional.custom import position_values, table_values
from x_attn.positional.row_positions import row_positions, rows_mask
from x_attn.validation_inputs import check_float_input, check_mems

Order = tuple[int, ...]


def checked_order(
    stack: Any,
    x: Tensor,
    requested: tuple[Order | None, Any],
    mems: list[Tensor] | None,
    cache: Any,
    causal: bool | None,
    global_and_mask: tuple[Tensor | None, Tensor | None],
) -> Order:
    """The checked run order of this call (``requested``: layers_execute_order, repeat_blocks)."""
    owner = type(stack).__name__
    check_float_input("x", x, stack.dim, owner)
    order = run_order(stack, *requested, mems, cache)
    if stack.unet is not None and order != stack.plan.order:
        raise ValueError(
            f"{owner}: unet_skips pairs the blocks of the stack as built; "
            "drop this call's layers_execute_order / repeat_blocks"
        )
    check_run_inputs(stack, x, mems, cache, causal, order)
    global_mask, mask = global_and_mask
    check_global_tokens(stack, x, global_mask, mask, cache)
    return order


def checked_mems(
    stack: Any,
    mems: list[Tensor] | None,
    b: int,
    dtype: torch.dtype,
    cache: KVCache | None,
    order: Order,
) -> int:
    """Memory length (0 without mems); mems join a cache only at its first call."""
    if mems is None:
        return 0
    if cache is not None and cache.length > 0:
        raise ValueError(
            f"{type(stack).__name__}: 'mems' given with a 'cache' that already holds "
            f"{cache.length} positions; the cache took the mems in at its first call (they "
            "are the context before its first position): pass mems only with an empty cache"
        )
    runs = sum(stack.layers[i].kind == "a" for i in order)
    return check_mems(mems, runs, b, stack.dim, dtype)


def per_run_inputs(
    stack: Any,
    order: Order,
    n: int,
    context: Tensor | None,
    additional: tuple[Any, Tensor | None, bool, bool],
    cross_attn_kv_residuals: Any,
    deep_embeds_and_ids: tuple[Tensor, Tensor] | None,
) -> dict[str, Any]:
    """The inputs given per run, one per run of their kind in ``order``.

    ``additional``: (self_attn_additional_kv, additional_kv_mask, detach_additional_kv,
    route_additional_kv_to_top). Returns the layer-loop state entries ``additional_kv``,
    ``context_residuals`` and ``ff_scales``.
    """
    owner = type(stack).__name__
    runs = {kind: sum(stack.layer_types[i] == kind for i in order) for kind in "acf"}
    kv, kv_mask, detach, to_top = additional
    extra_kv = additional_kv_per_layer(kv, kv_mask, runs["a"], detach, to_top, owner)
    residuals = context_residuals_per_layer(cross_attn_kv_residuals, context, runs["c"], owner)
    scales = ff_scales(deep_embeds_and_ids, n, runs["f"], stack.dim, owner)
    return dict(
        additional_kv=extra_kv or [None] * runs["a"],
        context_residuals=residuals,
        ff_scales=scales,
    )


def position_context(
    stack: Any,
    x: Tensor,
    given: tuple[Tensor | None, Tensor | None],
    context: Tensor | None,
    cache: KVCache | None,
    rows_in: tuple[list[Tensor] | None, Tensor | None, Tensor | None],
) -> tuple[PositionContext, Tensor | None, Tensor | None]:
    """The forward's positional tables, from the oldest position a layer holds on.

    ``given``: the forward's (pos, context_pos); ``rows_in``: (mems, their padding, the
    padding of ``x``). Padding renumbers the rows (``row_positions``), custom positions
    replace the numbers (``position_values``). Returns the tables, the custom position
    values of every slot for the cache (or None) and the real positions per row after this
    forward (or None when all were real).
    """
    mems, mem_mask, mask = rows_in
    b, n = x.shape[:2]
    mem_len = 0 if mems is None else mems[0].shape[1]
    past = cache.length if cache is not None else 0
    start = cache.first_position if cache is not None else 0
    held_real = None if cache is None else cache.real  # None: nothing padded so far
    held_mask = None if held_real is None else cache.key_mask
    new_mask = rows_mask(mem_mask, mask, mem_len, x)
    span = (start, past, past + mem_len + n)
    rows, real = row_positions(span, held_mask, held_real, new_mask, b, x.device)
    heads = stack.config.heads
    values = position_values(stack.positions, heads, given, x, context, cache, mems, (start, rows))
    if values is not None:
        rows = table_values(values, start)
    k_len = past + mem_len + n - start
    tables = stack.positions(n, k_len, x.device, x.dtype, start, rows, given[1])
    return tables, values, real


def refuse_reversible_state(return_attn: bool, per_call: tuple[Any, ...]) -> None:
    """A reversible stack runs without any per-call state to keep (``per_call``: mems,
    cache, self_attn_additional_kv, global mask, ff_deep_embed scales)."""
    if return_attn or any(arg is not None for arg in per_call):
        raise ValueError(
            "reversible=True stacks run without mems, cache, return_attn, "
            "self_attn_additional_kv, global_mask or deep_embeds_and_ids "
            "(the two-stream update has no per-layer hidden state to keep)"
        )


def stack_state(
    stack: Any, x: Tensor, cache: KVCache | None, order: Order, causal: bool | None
) -> dict[str, Any]:
    """The layer-loop state that comes from the stack: cache entries, reinjection, the
    dual stream, U-Net skips, this call's causality."""
    cfg = stack.config
    return dict(
        injection=injection(x, stack.reinject_input_proj, stack.learned_reinject_input_gate),
        entries=cache_entries(stack, cache, order),
        num_attn_runs=sum(stack.layer_types[i] != "f" for i in order),
        causal=causal,
        seq_causal=stack.causal if causal is None else bool(causal),
        dual=start_dual(x, cfg.resi_dual, cfg.resi_dual_scale),
        unet=stack.unet,
    )
