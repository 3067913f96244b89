"""Naive float64 reference attention: the oracle every kernel and mechanism is tested against.

Written step by step (scores, bias, mask, softmax, zero dead rows, weighted sum) so that it is
easy to check by eye. It deliberately imports nothing from x_attn.

Shape legend: b batch, h query heads, hk key/value heads, i query length, j key length,
dh head dim of q/k, dv head dim of v.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["reference_attention", "reference_probs"]


def _expand_kv_heads(t: Tensor, heads: int, name: str) -> Tensor:
    """Repeat k or v heads (b hk j d) to the query heads (b h j d).

    Query head ``n`` reads kv head ``n // (h // hk)`` (the ``repeat_interleave`` grouping that
    SDPA's ``enable_gqa`` uses); ``hk == 1`` is multi-query attention.
    """
    kv_heads = t.shape[1]
    if kv_heads == heads:
        return t
    if heads % kv_heads != 0:
        raise ValueError(
            f"reference_attention: '{name}' has {kv_heads} heads, which does not divide the "
            f"{heads} query heads; pass {name} with 1, {heads} or a divisor of {heads} heads"
        )
    return t.repeat_interleave(heads // kv_heads, dim=1)


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.ndim != 4:
            raise ValueError(
                f"reference_attention: '{name}' must be 4-D (b, h, n, d), got shape "
                f"{tuple(t.shape)}"
            )
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"reference_attention: q and k head dims differ ({q.shape[-1]} vs {k.shape[-1]})"
        )
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"reference_attention: k and v must agree on (b, hk, j), got {tuple(k.shape[:3])} "
            f"and {tuple(v.shape[:3])}"
        )
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(
            f"reference_attention: 'mask' must be a bool tensor (True = may attend), got "
            f"{mask.dtype}; pass a float bias through 'bias' instead"
        )


def _causal_allowed(i: int, j: int, device: torch.device) -> Tensor:
    """(i, j) bool: query t may see key s iff s <= t + (j - i) (bottom-right aligned)."""
    t = torch.arange(i, device=device).unsqueeze(-1)
    s = torch.arange(j, device=device).unsqueeze(0)
    return s <= t + (j - i)


def reference_probs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """Attention probabilities in float64.

    Args:
        q: (b, h, i, dh) queries.
        k: (b, hk, j, dh) keys; hk == h, 1, or a divisor of h (grouped query attention).
        v: (b, hk, j, dv) values (only checked for shape here).
        mask: bool, broadcastable to (b, h, i, j); True = may attend. A key padding mask
            of shape (b, j) must be passed as (b, 1, 1, j).
        bias: float, broadcastable to (b, h, i, j); added to the scaled scores.
        causal: bottom-right aligned causal mask (query t sees key s iff s <= t + (j - i)).
        scale: logit scale; defaults to dh ** -0.5.

    Returns:
        (b, h, i, j) float64 probabilities; a row with no allowed key is all zeros.
    """
    _check_inputs(q, k, v, mask)
    heads, i, dh = q.shape[1], q.shape[2], q.shape[3]
    j = k.shape[2]
    scale = dh**-0.5 if scale is None else scale

    q64 = q.to(torch.float64)
    k64 = _expand_kv_heads(k.to(torch.float64), heads, "k")

    # 1. scores (b h i j)
    scores = torch.einsum("bhid,bhjd->bhij", q64, k64) * scale

    # 2. additive bias
    if bias is not None:
        scores = scores + bias.to(torch.float64)

    # 3. one bool "may attend" mask, disallowed -> -inf
    allowed = torch.ones_like(scores, dtype=torch.bool)
    if mask is not None:
        allowed = allowed & mask.to(scores.device)
    if causal:
        allowed = allowed & _causal_allowed(i, j, scores.device)
    scores = scores.masked_fill(~allowed, float("-inf"))

    # 4. softmax over keys; rows where every score is -inf (no allowed key) become zeros
    dead = torch.isneginf(scores).all(dim=-1, keepdim=True)
    scores = scores.masked_fill(dead, 0.0)
    probs = scores.softmax(dim=-1)
    return probs.masked_fill(dead, 0.0)


def reference_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """Softmax attention in float64: softmax(q k^T * scale + bias, masked) @ v.

    Args:
        q: (b, h, i, dh) queries.
        k: (b, hk, j, dh) keys; hk == h, 1, or a divisor of h (grouped query attention).
        v: (b, hk, j, dv) values.
        mask: bool, broadcastable to (b, h, i, j); True = may attend.
        bias: float, broadcastable to (b, h, i, j); added to the scaled scores.
        causal: bottom-right aligned causal mask (query t sees key s iff s <= t + (j - i)).
        scale: logit scale; defaults to dh ** -0.5.

    Returns:
        (b, h, i, dv) float64 output; a query with no allowed key gets zeros (never NaN).
    """
    probs = reference_probs(q, k, v, mask=mask, bias=bias, causal=causal, scale=scale)
    v64 = _expand_kv_heads(v.to(torch.float64), q.shape[1], "v")
    return torch.einsum("bhij,bhjd->bhid", probs, v64)
