"""Thin adapter over ``torch.nn.functional.scaled_dot_product_attention`` (no feature logic).

Shape legend: b batch, h heads, i queries, j keys, dh head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from x_attn.kernels.inputs import AttnInputs, expand_kv_heads, merged_mask


def sdpa_attention(inputs: AttnInputs) -> Tensor:
    """Fused attention; returns (b, h, i, dv).

    Uses ``is_causal=True`` only when the mask is causal over identical query and key positions
    and nothing else constrains the keys (SDPA's causal flag is top-left aligned), otherwise
    one explicit mask. A bias becomes a float
    mask with masked entries at a large finite negative value. Query rows with no allowed key
    return zeros.
    """
    heads = inputs.q.shape[1]
    k = expand_kv_heads(inputs.k, heads)
    v = expand_kv_heads(inputs.v, heads)
    fast_causal = inputs.spec.square_causal() and inputs.bias is None
    mask = None if fast_causal else merged_mask(inputs)
    return sdpa_masked(inputs.q, k, v, mask, inputs.bias, inputs.scale, inputs.dropout, fast_causal)


def sdpa_masked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    bias: Tensor | None,
    scale: float,
    dropout: float,
    is_causal: bool = False,
) -> Tensor:
    """SDPA over (b, h, i, dh) queries and (b, h, j, d) keys/values with a bool ``mask``
    (True = may attend) and a float ``bias``; query rows with no allowed key return zeros."""
    attn_mask = mask
    if bias is not None:
        attn_mask = bias.to(q.dtype)
        if mask is not None:
            attn_mask = attn_mask.masked_fill(~mask, torch.finfo(q.dtype).max / -2)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout, is_causal=is_causal, scale=scale
    )
    if mask is not None:
        out = out.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    return out
