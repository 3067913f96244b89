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
    q = inputs.q
    heads = q.shape[1]
    k = expand_kv_heads(inputs.k, heads)
    v = expand_kv_heads(inputs.v, heads)
    fast_causal = inputs.spec.square_causal() and inputs.bias is None
    mask = None if fast_causal else merged_mask(inputs)
    attn_mask = mask
    if inputs.bias is not None:
        attn_mask = inputs.bias.to(q.dtype)
        if mask is not None:
            attn_mask = attn_mask.masked_fill(~mask, torch.finfo(q.dtype).max / -2)
    out = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=attn_mask,
        dropout_p=inputs.dropout,
        is_causal=fast_causal,
        scale=inputs.scale,
    )
    if mask is not None:
        out = out.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    return out
