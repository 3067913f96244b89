"""Checks of forward inputs at the API boundary: masks, token ids, float inputs, the KV cache,
batch indices, ``seq_start_pos`` and Transformer-XL mems.

Every check raises ValueError / TypeError naming the argument, what is wrong and the fix. The
flag-combination checks made at construction live in :mod:`x_attn.validation` (which
re-exports these names).

Shape legend: b batch, h heads, i queries, j / k keys, n sequence, m memory length, d model dim.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def check_bool_mask(name: str, mask: Tensor | None, shape: tuple[int, ...], hint: str) -> None:
    """``mask`` must be a bool tensor of exactly ``shape`` (or None)."""
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"'{name}' must be a bool tensor (True = may attend), got {mask.dtype}; "
            f"use {name}.bool()"
        )
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"'{name}' must have shape {tuple(shape)} ({hint}), got {tuple(mask.shape)}"
        )


def normalize_attn_mask(attn_mask: Tensor | None, b: int, h: int, i: int, j: int) -> Tensor | None:
    """The user's attention mask as a bool (b|1, h|1, i, j) tensor, True = may attend.

    Accepted, as in x-transformers: (i, j); (h, i, j) per head (a 3-D mask is never per
    sample); (b, h, i, j) with b and / or h given as 1 to broadcast. Checked once, at the
    stack's boundary, so the attention layers only ever see the 4-D form.
    """
    if attn_mask is None:
        return None
    check_bool_mask("attn_mask", attn_mask, tuple(getattr(attn_mask, "shape", ())), "")  # type
    lead = {2: (1, 1), 3: (1,), 4: ()}.get(attn_mask.ndim)
    shape = None if lead is None else (*lead, *attn_mask.shape)
    if shape is None or shape[0] not in (1, b) or shape[1] not in (1, h) or shape[2:] != (i, j):
        raise ValueError(
            f"'attn_mask' must have shape ({i}, {j}), (heads={h} or 1, {i}, {j}) or "
            f"(batch={b} or 1, heads={h} or 1, {i}, {j}) (queries x keys, True = may attend; "
            "a 3-D mask is per head, as in x-transformers: one mask per sample is "
            f"(batch, 1, {i}, {j})), got {tuple(attn_mask.shape)}"
        )
    return attn_mask.reshape(shape)


def merge_kv_mask(
    kv_mask: Tensor | None, attn_mask: Tensor | None, b: int, n: int, k: int
) -> Tensor | None:
    """``self_attn_kv_mask`` (b, k) merged into the (normalized) attention mask.

    A key hidden by either is hidden: the result is (b|1, h|1, n, k) or None.
    """
    if kv_mask is None:
        return attn_mask
    check_bool_mask(
        "self_attn_kv_mask",
        kv_mask,
        (b, k),
        "batch x keys self-attention holds: cached, memories and new, True = may attend",
    )
    keys = kv_mask[:, None, None, :].expand(b, 1, n, k)
    return keys if attn_mask is None else attn_mask & keys


def token_ids(name: str, x: Any, owner: str, hint: str = "") -> Tensor:
    """``x`` as token ids: integer tensors as they are, float tensors of integral values cast
    to long (x-transformers casts token ids with ``.long()``); anything else is refused."""
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{owner}: '{name}' must be a tensor of integer token ids, got {type(x).__name__}"
        )
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{owner}: '{name}' must hold integer token ids, got {x.dtype}{hint}")
    if not x.is_floating_point():
        return x
    if not bool((torch.isfinite(x) & (x == x.round())).all()):
        raise TypeError(
            f"{owner}: '{name}' must hold integer token ids, got {x.dtype} with non-integral "
            f"values{hint}"
        )
    return x.long()


def check_float_input(name: str, x: Tensor, dim: int, owner: str) -> None:
    """``x`` must be a floating (b, n, dim) tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner}: '{name}' must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{owner}: '{name}' must be a float tensor (b, n, {dim}), got {x.dtype}; "
            "token ids go to TransformerWrapper"
        )
    if x.ndim != 3 or x.shape[-1] != dim:
        raise ValueError(
            f"{owner}: '{name}' must have shape (batch, seq, {dim}), got {tuple(x.shape)}"
        )


def check_cache(cache: Any, num_layers: int, b: int, owner: str) -> None:
    """A KV cache must be a KVCache of this stack (one entry per attention layer), same batch."""
    from x_attn.cache import KVCache

    if cache is None:
        return
    if not isinstance(cache, KVCache):
        raise TypeError(
            f"{owner}: 'cache' must be a KVCache (the one return_cache=True returned) or the "
            f"intermediates return_intermediates=True returned, got {type(cache).__name__}"
        )
    if len(cache.entries) != num_layers:
        raise ValueError(
            f"{owner}: 'cache' holds {len(cache.entries)} attention layers, but this stack has "
            f"{num_layers}; pass a cache made by this model"
        )
    held = cache.batch
    if held is not None and held != b:
        raise ValueError(
            f"{owner}: 'cache' holds batch {held}, but the input has batch {b}; use "
            "cache.select(index) to keep some rows, or a new cache"
        )


def check_batch_index(index: Any, b: int | None, owner: str) -> None:
    """Rows to keep: a (b,) bool tensor or integer indices in [-b, b)."""
    if not isinstance(index, Tensor) or index.is_floating_point() or index.is_complex():
        got = index.dtype if isinstance(index, Tensor) else type(index).__name__
        raise TypeError(f"{owner}: 'index' must be an integer or bool tensor of rows, got {got}")
    if b is None:
        return
    if index.dtype == torch.bool:
        if tuple(index.shape) != (b,):
            raise ValueError(
                f"{owner}: a bool 'index' must have shape (batch={b},), got {tuple(index.shape)}"
            )
        return
    if index.numel() and (int(index.min()) < -b or int(index.max()) >= b):
        raise ValueError(
            f"{owner}: 'index' must lie in [{-b}, {b}) (the cache holds batch {b}), got "
            f"{index.tolist()}"
        )


def check_seq_start_pos(seq_start_pos: Any, b: int, length: int | None, owner: str) -> None:
    """(b,) integer index of each row's first real token, in [0, length).

    ``length`` None: a stream decoded call by call, where a row's first real token may come
    in a later call (only negative values are refused).
    """
    if seq_start_pos is None:
        return
    if (
        not isinstance(seq_start_pos, Tensor)
        or seq_start_pos.is_floating_point()
        or seq_start_pos.dtype == torch.bool
    ):
        raise TypeError(
            f"{owner}: 'seq_start_pos' must be a (batch,) integer tensor (the index of each "
            f"row's first real token), got {getattr(seq_start_pos, 'dtype', type(seq_start_pos))}"
        )
    if tuple(seq_start_pos.shape) != (b,):
        raise ValueError(
            f"{owner}: 'seq_start_pos' must have shape (batch={b},), got "
            f"{tuple(seq_start_pos.shape)}"
        )
    if length is None:
        if bool((seq_start_pos < 0).any()):
            raise ValueError(
                f"{owner}: 'seq_start_pos' must be >= 0 (each row's first real token), got "
                f"{seq_start_pos.tolist()}"
            )
        return
    if bool(((seq_start_pos < 0) | (seq_start_pos >= length)).any()):
        raise ValueError(
            f"{owner}: 'seq_start_pos' must lie in [0, {length}) (a row needs one real token "
            f"among the {length} positions so far), got {seq_start_pos.tolist()}"
        )


def check_mems(mems: Any, layers: int, b: int, dim: int, dtype: torch.dtype) -> int:
    """Transformer-XL memories: ``layers`` (b, m, dim) tensors of one m and the input's dtype.

    Returns m.
    """
    if not isinstance(mems, (list, tuple)) or len(mems) != layers:
        got = f"{len(mems)} items" if isinstance(mems, (list, tuple)) else type(mems).__name__
        raise ValueError(
            f"'mems' must be a list of {layers} tensors (one per self-attention layer), got "
            f"{got}; pass the mems this model returned"
        )
    bad = [type(m).__name__ for m in mems if not isinstance(m, Tensor)]
    if bad:
        raise TypeError(
            f"'mems' must be a list of {layers} tensors (one per self-attention layer), got "
            f"{', '.join(bad)}; pass the mems this model returned"
        )
    dtypes = {m.dtype for m in mems}
    if dtypes != {dtype}:
        found = ", ".join(sorted(str(d) for d in dtypes))
        raise TypeError(
            f"'mems' must hold {dtype} tensors like the input, got {found}; pass the mems "
            "this model returned (or cast them with .to(dtype))"
        )
    m = mems[0].shape[1] if mems[0].ndim == 3 else -1
    for mem in mems:
        if mem.ndim != 3 or mem.shape[0] != b or mem.shape[2] != dim or mem.shape[1] != m:
            raise ValueError(
                f"each of 'mems' must have shape (batch={b}, mem_len, dim={dim}) with one "
                f"mem_len, got {tuple(mem.shape)}"
            )
    mask = getattr(mems, "mask", None)
    check_bool_mask("mems.mask", mask, (b, m), "batch x mem_len, True = real row")
    return m
