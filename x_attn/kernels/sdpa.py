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
    one explicit mask. A bias becomes a float mask with masked entries at ``-inf``: any finite
    stand-in (such as half of float16's maximum) is beaten by large scores, which the kernels
    form in float32, and the masked keys would leak in. Query rows with no allowed key return
    zeros: the kernel sees them unmasked (no all ``-inf`` row whose softmax some backends turn
    into NaN) and their output is replaced by zeros.
    """
    q = inputs.q
    heads = q.shape[1]
    k = expand_kv_heads(inputs.k, heads)
    v = expand_kv_heads(inputs.v, heads)
    fast_causal = inputs.spec.square_causal() and inputs.bias is None
    mask = None if fast_causal else merged_mask(inputs)
    empty = None if mask is None else ~mask.any(dim=-1, keepdim=True)  # rows with no key
    attn_mask = None if mask is None else mask | empty
    if inputs.bias is not None:
        bias = inputs.bias.to(q.dtype)
        attn_mask = bias if mask is None else torch.where(attn_mask, bias, float("-inf"))
    out = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=attn_mask,
        dropout_p=inputs.dropout,
        is_causal=fast_causal,
        scale=inputs.scale,
    )
    return out if empty is None else out.masked_fill(empty, 0.0)
