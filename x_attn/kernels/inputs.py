"""What every attention kernel receives: q, k, v, a mask description, one float bias.

Shape legend: b batch, h query heads, hk key/value heads (a divisor of h), i queries, j keys,
dh query/key head dim, dv value head dim.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from x_attn.masks.causal import CAUSAL
from x_attn.masks.spec import AttnMask, Span


@dataclass
class AttnInputs:
    """Inputs of one attention call.

    Attributes:
        q: (b, h, i, dh) queries.
        k: (b, hk, j, dh) keys, hk a divisor of h.
        v: (b, hk, j, dv) values.
        mask: shorthand for a dense mask: bool, broadcastable to (b, h, i, j); True = may
            attend. None = all allowed. Only used when ``spec`` is not given.
        bias: float, broadcastable to (b, h, i, j), added to the scaled logits.
        causal: shorthand, with ``mask``: bottom-right aligned causal masking on top of
            ``mask``: query t may see key s iff s <= t + (j - i). Keys prepended before the
            queries' own block (memory key/values, a KV cache, Transformer-XL memories) are
            therefore visible.
        scale: logit scale.
        dropout: dropout probability on the attention weights (0 in eval).
        spec: the mask as a description over absolute positions (see
            :class:`x_attn.masks.AttnMask`); built from ``mask`` and ``causal`` when None.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    mask: Tensor | None = None
    bias: Tensor | None = None
    causal: bool = False
    scale: float = 1.0
    dropout: float = 0.0
    spec: AttnMask | None = None

    def __post_init__(self) -> None:
        if self.spec is None:  # the dense shorthand: queries are the last i of j positions
            i, j = self.q_len, self.k_len
            rules = (CAUSAL,) if self.causal else ()
            self.spec = AttnMask(Span(j - i, j), Span(0, j), rules, user=self.mask)
        elif self.mask is not None or self.causal:
            raise AssertionError("AttnInputs: give either spec or the mask/causal shorthand")

    @property
    def q_len(self) -> int:
        return self.q.shape[-2]

    @property
    def k_len(self) -> int:
        return self.k.shape[-2]


def widen_to_values(
    q: Tensor, k: Tensor, v: Tensor
) -> tuple[Tensor, Tensor, AbstractContextManager]:
    """(q, k, a context for the kernel call): when a value transform keeps the values wider
    than the queries (LASER's exp values in float32 for half precision), q and k promoted to
    the values' dtype (SDPA takes one dtype) and autocast off, which would narrow them again;
    otherwise all unchanged and a null context."""
    if v.dtype == q.dtype:
        return q, k, nullcontext()
    return q.to(v.dtype), k.to(v.dtype), torch.autocast(q.device.type, enabled=False)


def merged_mask(inputs: AttnInputs) -> Tensor | None:
    """The dense bool mask of ``inputs`` (or None): :meth:`AttnMask.dense` on the query device."""
    return inputs.spec.dense(inputs.q.device)


def expand_kv_heads(t: Tensor, heads: int) -> Tensor:
    """(b, hk, j, d) -> (b, heads, j, d); query head t uses key/value head t // (heads / hk).

    No copy when hk is 1 or ``heads``; other divisors repeat each key/value head (a copy). The
    kernels avoid it (see :func:`group_queries`); this is for callers that need per-head keys.
    """
    hk = t.shape[1]
    if hk == heads:
        return t
    if hk == 1:
        return t.expand(-1, heads, -1, -1)
    if heads % hk:
        raise AssertionError(f"key/value heads {hk} cannot serve {heads} query heads")
    return t.repeat_interleave(heads // hk, dim=1)


def group_queries(t: Tensor, kv_heads: int) -> Tensor:
    """(b, h, i, ...) -> (b, hk, g, i, ...): the g = h / hk query heads of each key/value head.

    Contiguous grouping: query head t = kv * g + r reads key/value head kv = t // g (SDPA's
    ``enable_gqa``, Hugging Face's ``repeat_kv``). A view; no key or value is copied.
    """
    return t.unflatten(1, (kv_heads, t.shape[1] // kv_heads))
