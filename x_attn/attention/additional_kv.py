"""Keys and values a caller adds to one self-attention call (x-transformers'
``self_attn_additional_kv``): e.g. the cached keys/values of another model (a vision-language
model's layers read by an action model).

They have no position (no rotary, no positional bias), are prepended to the layer's keys, and
are visible to every query unless ``additional_kv_mask`` hides them. When their head count
differs from the layer's key heads, both are expanded to the query heads (query head t reads
head t // (h / heads of the tensor), as everywhere in x_attn).

Shape legend: b batch, h query heads, hk key heads, ha additional heads, m additional keys,
j keys, dq query/key head dim, dv value head dim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from x_attn.kernels.inputs import expand_kv_heads
from x_attn.masks.spec import AttnMask

Extended = tuple[Tensor, Tensor, AttnMask, Tensor | None]


def prepend_keys(
    current: Extended,
    kv: Any,
    kv_mask: Tensor | None,
    heads: int,
    owner: str = "Attention",
    value_maps: tuple[Callable[[Tensor], Tensor], ...] = (),
) -> Extended:
    """(k, v, mask, bias) with ``kv`` = (k (b, ha, m, dq), v (b, ha, m, dv)) in front.

    ``kv_mask`` (b, m) bool, True = may attend. ``value_maps`` are applied in turn to the
    additional values (e.g. LASER's exp, which every value goes through). Returns ``current``
    unchanged when ``kv`` is None.
    """
    k, v, mask, bias = current
    if kv is None:
        if kv_mask is not None:
            raise ValueError(
                f"{owner}: an additional key/value mask was given without additional "
                "key/values; pass them too, or drop the mask"
            )
        return current
    extra_k, extra_v = _checked(kv, k, v, heads, owner)
    for value_map in value_maps:
        extra_v = value_map(extra_v)
    m = extra_k.shape[-2]
    _check_mask(kv_mask, k.shape[0], m, owner)
    if extra_k.shape[1] != k.shape[1] or extra_v.shape[1] != v.shape[1]:
        k, v, extra_k, extra_v = (expand_kv_heads(t, heads) for t in (k, v, extra_k, extra_v))
    k = torch.cat((extra_k, k), dim=-2)
    v = torch.cat((extra_v, v), dim=-2)
    bias = None if bias is None else F.pad(bias, (m, 0), value=0.0)
    return k, v, mask.with_free(m, kv_mask), bias


def _checked(kv: Any, k: Tensor, v: Tensor, heads: int, owner: str) -> tuple[Tensor, Tensor]:
    """The (k, v) pair, checked against the layer's keys and values."""
    if (
        not isinstance(kv, (tuple, list))
        or len(kv) != 2
        or not all(isinstance(t, Tensor) for t in kv)
    ):
        raise TypeError(
            f"{owner}: additional key/values must be a (k, v) pair of tensors per "
            f"self-attention layer, got {type(kv).__name__}"
        )
    extra_k, extra_v = kv
    b, dq, dv = k.shape[0], k.shape[-1], v.shape[-1]
    for name, t, d in (("k", extra_k, dq), ("v", extra_v, dv)):
        if t.ndim != 4 or t.shape[0] != b or t.shape[-1] != d or heads % max(t.shape[1], 1):
            raise ValueError(
                f"{owner}: additional {name} must have shape (batch={b}, heads dividing "
                f"{heads}, length, {d}), got {tuple(t.shape)}"
            )
        if t.dtype != k.dtype:
            raise TypeError(
                f"{owner}: additional {name} is {t.dtype} but the layer computes in {k.dtype}; "
                f"cast it with .to({k.dtype})"
            )
    if extra_k.shape[1:3] != extra_v.shape[1:3]:
        raise ValueError(
            f"{owner}: additional k and v must agree on (heads, length), got "
            f"{tuple(extra_k.shape[1:3])} and {tuple(extra_v.shape[1:3])}"
        )
    return extra_k.to(k.device), extra_v.to(v.device)


def _check_mask(kv_mask: Tensor | None, b: int, m: int, owner: str) -> None:
    if kv_mask is None:
        return
    if not isinstance(kv_mask, Tensor) or kv_mask.dtype != torch.bool:
        raise TypeError(f"{owner}: 'additional_kv_mask' must be a bool tensor (True = may attend)")
    if tuple(kv_mask.shape) != (b, m):
        raise ValueError(
            f"{owner}: 'additional_kv_mask' must have shape (batch={b}, {m}) (one flag per "
            f"additional key), got {tuple(kv_mask.shape)}"
        )


def route_additional_kv(
    kvs: Any, layers: int, detach: bool, to_top: bool, owner: str
) -> list[tuple[Tensor, Tensor] | None]:
    """One (k, v) pair or None per self-attention layer, from the caller's list.

    ``to_top``: the last pairs go to the top layers (a shorter list leaves the bottom layers
    without; a longer one gives its last ``layers`` pairs, the top of a deeper model); else the
    first pairs go to the bottom layers (a longer list is refused).
    """
    if not isinstance(kvs, (list, tuple)):
        raise TypeError(
            f"{owner}: 'self_attn_additional_kv' must be a list of (k, v) pairs (one per "
            f"self-attention layer) or the intermediates of a model run with a cache, got "
            f"{type(kvs).__name__}"
        )
    kvs = [None if kv is None else tuple(kv) for kv in kvs]
    if detach:
        kvs = [None if kv is None else tuple(t.detach() for t in kv) for kv in kvs]
    if to_top:
        kvs = kvs[-layers:] if layers else []
        return [None] * (layers - len(kvs)) + kvs
    if len(kvs) > layers:
        raise ValueError(
            f"{owner}: {len(kvs)} additional key/value pairs for {layers} self-attention "
            "layers; pass at most one per layer, or route_additional_kv_to_top=True to use "
            "the last ones"
        )
    return kvs + [None] * (layers - len(kvs))
