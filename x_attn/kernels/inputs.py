"""What every attention kernel receives: one bool mask, one float bias, a causal flag.

Shape legend: b batch, h query heads, hk key/value heads (1 or h), i queries, j keys,
dh query/key head dim, dv value head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class AttnInputs:
    """Inputs of one attention call.

    Attributes:
        q: (b, h, i, dh) queries.
        k: (b, hk, j, dh) keys, hk in {1, h}.
        v: (b, hk, j, dv) values.
        mask: bool, broadcastable to (b, h, i, j); True = may attend. None = all allowed.
        bias: float, broadcastable to (b, h, i, j), added to the scaled logits.
        causal: bottom-right aligned causal masking on top of ``mask``: query t may see
            key s iff s <= t + (j - i). Keys prepended before the queries' own block (memory
            key/values, a KV cache, Transformer-XL memories) are therefore visible.
        scale: logit scale.
        dropout: dropout probability on the attention weights (0 in eval).
    """

    q: Tensor
    k: Tensor
    v: Tensor
    mask: Tensor | None = None
    bias: Tensor | None = None
    causal: bool = False
    scale: float = 1.0
    dropout: float = 0.0

    @property
    def q_len(self) -> int:
        return self.q.shape[-2]

    @property
    def k_len(self) -> int:
        return self.k.shape[-2]


def causal_mask(i: int, j: int, device: torch.device | None = None) -> Tensor:
    """(i, j) bool mask, True = may attend, bottom-right aligned: key s <= query t + (j - i)."""
    rows = torch.arange(i, device=device).unsqueeze(-1) + (j - i)
    return torch.arange(j, device=device) <= rows


def merged_mask(inputs: AttnInputs) -> Tensor | None:
    """The padding / user mask and the causal mask folded into one bool mask (or None)."""
    mask = inputs.mask
    if inputs.causal and inputs.q_len > 1:  # one query sits last: it may see every key
        causal = causal_mask(inputs.q_len, inputs.k_len, inputs.q.device)
        mask = causal if mask is None else mask & causal
    return mask


def expand_kv_heads(t: Tensor, heads: int) -> Tensor:
    """(b, hk, j, d) -> (b, heads, j, d) without copying when hk == 1."""
    if t.shape[1] == heads:
        return t
    if t.shape[1] != 1:
        raise AssertionError(f"key/value heads {t.shape[1]} cannot broadcast to {heads}")
    return t.expand(-1, heads, -1, -1)
