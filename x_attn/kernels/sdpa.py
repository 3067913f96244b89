"""Thin adapter over ``torch.nn.functional.scaled_dot_product_attention`` (no feature logic).

Grouped key/value heads (hk < h, query head t reads kv head t // (h / hk)) are never copied per
query head. SDPA's ``enable_gqa=True`` serves them without a copy on its fused CPU kernel (torch
2.13: ``_scaled_dot_product_flash_attention_for_cpu``), which needs equal query/key and value
head dims, no dropout and no bias that requires a gradient; otherwise SDPA falls back to its
math path, which repeats k and v for every query head (``repeat_interleave``: at 8k keys,
8 query heads on one latent key head, ~20x slower than the alternative). Then the g query heads
of each kv head are folded into the query axis instead: (b, hk, g * i, d) queries against the
hk kv heads, which is the same attention with nothing copied but the mask.

Shape legend: b batch, h heads, hk key/value heads, g = h / hk, i queries, j keys, dh head dim,
dv value head dim.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from x_attn.kernels.inputs import AttnInputs, expand_kv_heads, merged_mask


def sdpa_attention(inputs: AttnInputs) -> Tensor:
    """Fused attention; returns (b, h, i, dv).

    Uses ``is_causal=True`` only when the mask is causal over identical query and key positions
    and nothing else constrains the keys (SDPA's causal flag is top-left aligned), otherwise
    one explicit mask. A bias becomes a float mask with masked entries at ``-inf``: any finite
    stand-in (such as half of float16's maximum) is beaten by large scores, which the kernels
    form in float32, and the masked keys would leak in. Query rows with no allowed key return
    zeros: the kernel sees them unmasked (no all ``-inf`` row whose softmax some backends turn
    into NaN) and their output is replaced by zeros.
    """
    q, k, v = inputs.q, inputs.k, inputs.v
    heads = q.shape[1]
    if k.shape[1] != v.shape[1]:  # e.g. collaborative heads: one key head, a value per head
        k, v = expand_kv_heads(k, heads), expand_kv_heads(v, heads)
    grouped = k.shape[1] != heads
    fold = grouped and not _fused_serves_groups(inputs)
    fast_causal = inputs.spec.square_causal() and inputs.bias is None and not fold
    mask = None if fast_causal else merged_mask(inputs)
    attn_mask, empty = _kernel_mask(mask, inputs.bias, q.dtype)
    if fold:
        out = _folded_groups(q, k, v, attn_mask, inputs)
    else:
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=inputs.dropout,
            is_causal=fast_causal,
            scale=inputs.scale,
            enable_gqa=grouped,
        )
    return out if empty is None else out.masked_fill(empty, 0.0)


def sdpa_masked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    bias: Tensor | None,
    scale: float,
    dropout: float,
) -> Tensor:
    """SDPA over (b, h, i, dh) queries and (b, h, j, d) keys/values with a bool ``mask``
    (True = may attend) and a float ``bias``; query rows with no allowed key return zeros."""
    attn_mask, empty = _kernel_mask(mask, bias, q.dtype)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout, scale=scale
    )
    return out if empty is None else out.masked_fill(empty, 0.0)


def _kernel_mask(
    mask: Tensor | None, bias: Tensor | None, dtype: torch.dtype
) -> tuple[Tensor | None, Tensor | None]:
    """SDPA's mask and the query rows with no allowed key (None when nothing is masked).

    Empty rows are left unmasked (their output is zeroed after the kernel); a bias becomes a
    float mask with ``-inf`` at masked entries.
    """
    empty = None if mask is None else ~mask.any(dim=-1, keepdim=True)
    attn_mask = None if mask is None else mask | empty
    if bias is not None:
        bias = bias.to(dtype)
        attn_mask = bias if mask is None else torch.where(attn_mask, bias, float("-inf"))
    return attn_mask, empty


def unmasked_sdpa(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, dropout: float, scale: float, spec: Any
) -> Tensor | None:
    """The one fused SDPA call :func:`sdpa_attention` makes when ``spec`` hides no key, there is
    no bias or dropout, one key head per value head and query/key width equal to the value
    width (so ``enable_gqa`` serves grouped heads); None otherwise. An attention layer with
    nothing between its projections and this kernel calls it first: a decode step then skips
    building the kernel's inputs, hooks and mask."""
    if bias is not None or dropout or k.shape[1] != v.shape[1] or q.shape[-1] != v.shape[-1]:
        return None
    if not spec.hides_nothing():
        return None
    return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=k.shape[1] != q.shape[1])


def _fused_serves_groups(inputs: AttnInputs) -> bool:
    """Whether SDPA's fused kernel can take grouped k/v as they are (``enable_gqa``)."""
    bias_grad = inputs.bias is not None and inputs.bias.requires_grad
    same_dims = inputs.q.shape[-1] == inputs.v.shape[-1]
    return same_dims and inputs.dropout == 0 and not bias_grad


def _folded_groups(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, inputs: AttnInputs
) -> Tensor:
    """Grouped attention as hk-head attention over g * i queries (no k/v copy)."""
    hk = k.shape[1]
    folded_q = rearrange(q, "b (hk g) i d -> b hk (g i) d", hk=hk)
    if attn_mask is not None:
        while attn_mask.ndim < 4:
            attn_mask = attn_mask.unsqueeze(0)
        per_head = attn_mask.expand(-1, q.shape[1], q.shape[2], -1)
        attn_mask = rearrange(per_head, "b (hk g) i j -> b hk (g i) j", hk=hk)
    out = F.scaled_dot_product_attention(
        folded_q, k, v, attn_mask=attn_mask, dropout_p=inputs.dropout, scale=inputs.scale
    )
    return rearrange(out, "b hk (g i) d -> b (hk g) i d", i=q.shape[2])
