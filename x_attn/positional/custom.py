"""Custom positions in forward: ``pos=`` for self-attention, ``context_pos=`` for a context.

As in x-transformers, ``AttentionLayers.forward(x, pos=...)`` gives the positions the
positional methods see instead of ``0, 1, 2, ...``; ``TransformerWrapper`` passes its ``pos``
on (and uses it for its absolute embedding). Here ``pos`` holds the positions of the tokens of
this call only: with a KV cache the positions of earlier tokens are kept in the cache
(``KVCache.position_values``), so a decoding step passes just its own position. Given
positions are taken as they are (padding does not renumber them); tokens of a call without
``pos`` take their default positions (their index, or their count of real tokens when padding
renumbers, see :mod:`x_attn.positional.row_positions`). Layouts:

* ``(n,)`` shared by the batch, ``(b, n)`` per sample: rotary, ALiBi, T5, dynamic bias, Shaw
  and position-infused sinusoids all read them;
* ``(b, h, n)`` per head: only the additive biases (ALiBi, T5, dynamic) can use them.

``context_pos`` ((j,) or (b, j)) places a cross-attention context for rotary embeddings
(the queries keep their own positions), as in x-transformers; the other schemes never act on
cross-attention.

Shape legend: b batch, h heads, n tokens, j context length, L slots so far, k slots of a
forward's tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange
from torch import Tensor

if TYPE_CHECKING:
    from x_attn.cache import KVCache
    from x_attn.positional.stack_positions import StackPositions


def check_pos(pos: object, b: int, n: int, heads: int, per_head_ok: bool, owner: str) -> Tensor:
    """``pos`` as given, after checking its dtype and layout."""
    if not isinstance(pos, Tensor) or pos.is_complex() or pos.dtype == torch.bool:
        got = pos.dtype if isinstance(pos, Tensor) else type(pos).__name__
        raise TypeError(
            f"{owner}: 'pos' must be a tensor of positions (integer or real), got {got}"
        )
    shapes = [(n,), (b, n)] + ([(b, heads, n)] if per_head_ok else [])
    if tuple(pos.shape) not in shapes:
        extra = "" if per_head_ok else " (per-head (b, h, n) positions: an additive bias only)"
        raise ValueError(
            f"{owner}: 'pos' must have shape {' or '.join(map(str, shapes))} (the positions of "
            f"this call's {n} tokens){extra}, got {tuple(pos.shape)}"
        )
    if not bool(torch.isfinite(pos.double()).all()):
        raise ValueError(f"{owner}: 'pos' must hold finite positions")
    return pos


def check_context_pos(context_pos: object, b: int, j: int, owner: str) -> Tensor:
    """``context_pos`` (j,) or (b, j) real positions of the context."""
    if not isinstance(context_pos, Tensor) or context_pos.is_complex():
        raise TypeError(f"{owner}: 'context_pos' must be a tensor of positions")
    if context_pos.dtype == torch.bool or tuple(context_pos.shape) not in ((j,), (b, j)):
        raise ValueError(
            f"{owner}: 'context_pos' must be an integer or real tensor of shape ({j},) or "
            f"({b}, {j}) (one position per context token), got {context_pos.dtype} "
            f"{tuple(context_pos.shape)}"
        )
    return context_pos


def _canonical(values: Tensor) -> Tensor:
    """(L,), (b, L) or (b, h, L) -> (b|1, h|1, L)."""
    if values.ndim == 1:
        return rearrange(values, "l -> 1 1 l")
    if values.ndim == 2:
        return rearrange(values, "b l -> b 1 l")
    return values


def _compact(values: Tensor) -> Tensor:
    """(b|1, h|1, L) -> the smallest layout: (L,), (b, L) or (b, h, L)."""
    if values.shape[1] > 1:
        return values
    values = values[:, 0]
    return values[0] if values.shape[0] == 1 else values


def default_values(length: int, rows: Tensor | None, start: int, device: torch.device) -> Tensor:
    """(b|1, length) values of slots ``0 ... length - 1`` without custom positions.

    Each slot's own index, or, from ``start`` on, the per-row positions ``rows`` (b, k) that
    padding gives (see :mod:`x_attn.positional.row_positions`).
    """
    slots = torch.arange(length, device=device).unsqueeze(0)
    if rows is None:
        return slots
    return torch.cat((slots[:, :start].expand(rows.shape[0], -1), rows.to(device)), dim=-1)


def slot_values(record: Tensor | None, past: int, new: Tensor | None, default: Tensor) -> Tensor:
    """Position values of every slot ``0 ... L - 1`` in (b|1, h|1, L) layout.

    ``record``: what a cache kept for its ``past`` slots (None: their ``default``); ``new``:
    the custom positions of the new slots ``past ...`` (None: their ``default``); ``default``
    (b|1, L): :func:`default_values`.
    """
    old = _canonical(record if record is not None else default[:, :past])
    new = _canonical((new if new is not None else default[:, past:]).to(default.device))
    if old.dtype != new.dtype:
        wide = torch.promote_types(old.dtype, new.dtype)
        old, new = old.to(wide), new.to(wide)
    b, h = max(old.shape[0], new.shape[0]), max(old.shape[1], new.shape[1])
    both = (old.expand(b, h, -1), new.expand(b, h, -1))
    return torch.cat(both, dim=-1)


def table_values(all_values: Tensor, start: int) -> Tensor:
    """The values of slots ``start ...`` in the smallest layout, for a PositionContext."""
    return _compact(all_values[..., start:])


def position_values(
    stack: StackPositions,
    heads: int,
    given: tuple[Tensor | None, Tensor | None],
    x: Tensor,
    context: Tensor | None,
    cache: KVCache | None,
    mems: list[Tensor] | None,
    rows: tuple[int, Tensor | None] = (0, None),
) -> Tensor | None:
    """A stack forward's custom position values of every slot so far, or None (none given).

    ``given`` is the forward's ``(pos, context_pos)``; they are checked against the stack
    (``StackPositions``), the input ``x`` (b, n, d), the context and the Transformer-XL mems.
    The values come from ``pos`` and the cache's record of earlier calls; slots that neither
    gives take their default (``rows``: (start, per-row positions from padding or None)).
    """
    pos, context_pos = given
    owner = "AttentionLayers"
    b, n = x.shape[:2]
    if context_pos is not None:
        if context is None or stack.rotary is None:
            raise ValueError(
                f"{owner}: 'context_pos' places a cross-attention context for rotary "
                "embeddings, so it needs context= and rotary_pos_emb=True on this stack"
            )
        check_context_pos(context_pos, b, context.shape[1], owner)
    record = cache.position_values if cache is not None else None
    if pos is None and record is None:
        return None
    if pos is not None:
        if not stack.is_relative:
            raise ValueError(
                f"{owner}: 'pos' gives positions to the stack's positional methods, but it has "
                "none (rotary_pos_emb, rel_pos_bias, alibi_pos_bias, dynamic_pos_bias, "
                "shaw_rel_pos or position_infused_attn)"
            )
        if mems is not None:
            raise ValueError(
                f"{owner}: 'pos' positions this call's tokens, but the positions of the "
                "Transformer-XL mems are unknown; drop one of pos and mems"
            )
        check_pos(pos, b, n, heads, stack.takes_per_head_positions, owner)
    mem_len = 0 if mems is None else mems[0].shape[1]
    past = cache.length if cache is not None else 0
    default = default_values(past + mem_len + n, rows[1], rows[0], x.device)
    return slot_values(record, past, pos, default)


def route_pos(
    owner: str,
    kwargs: dict[str, Any],
    shape: tuple[int, int],
    stack: tuple[bool, bool],
    absolute: bool,
) -> Tensor | None:
    """A sequence wrapper's ``pos``: integer positions of its ``shape`` (b, n) tokens.

    ``stack``: (its layers have relative positions, memory tokens are prepended);
    ``absolute``: the wrapper has an absolute embedding, which reads them (returned). They
    go on to the stack when its layers have relative positions (left in ``kwargs``); nothing
    using them is an error.
    """
    pos = kwargs.pop("pos", None)
    if pos is None:
        return None
    relative, memory_tokens = stack
    if not isinstance(pos, Tensor) or pos.is_floating_point() or pos.dtype == torch.bool:
        raise TypeError(
            f"{owner}: 'pos' must be an integer tensor of token positions (x-transformers' "
            "float pos, a precomputed positional embedding, is not supported)"
        )
    if relative:
        if memory_tokens:
            raise ValueError(
                f"{owner}: 'pos' positions the tokens for the layers, but num_memory_tokens "
                "prepends memory tokens whose positions it does not give; drop one"
            )
        kwargs["pos"] = pos
    elif not absolute:
        raise ValueError(
            f"{owner}: 'pos' positions the tokens, but this model has no positions at all "
            "(use_abs_pos_emb=False and no relative scheme in the layers)"
        )
    b, n = shape
    if absolute and tuple(pos.shape) not in ((n,), (b, n)):
        raise ValueError(
            f"{owner}: 'pos' must have shape ({n},) or ({b}, {n}), got {tuple(pos.shape)}"
        )
    return pos
