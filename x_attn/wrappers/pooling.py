"""Sequence pooling for classification: mean pooling, class tokens, attention pooling.

* ``average_pool_embed``: masked mean of the stack's outputs over the real positions
  (global average pooling).
* ``use_cls_token``: ``num_cls_tokens`` learned tokens placed before the sequence; their outputs
  are the representation (BERT, Devlin et al., arXiv 1810.04805). They need a bidirectional
  stack: under a causal mask a token placed first sees only the tokens before it.
* ``attn_pool``: ``num_pooled_tokens`` learned queries cross-attend to the stack's outputs
  (Set Transformer's pooling by multihead attention, Lee et al., arXiv 1810.00825).

Shape legend: b batch, n sequence, d model dim, k pooled / class tokens, dp pooled dim.
"""

from __future__ import annotations

import torch
from einops import repeat
from torch import Tensor, nn

from x_attn.attention.attention import Attention
from x_attn.layers.stack import AttentionLayers, CrossAttender
from x_attn.utils import check_positive_int


def masked_mean(h: Tensor, mask: Tensor | None) -> Tensor:
    """(b, n, d) -> (b, d): mean over positions where ``mask`` (b, n) is True (0 if none)."""
    if mask is None:
        return h.mean(dim=1)
    weights = mask.to(h.dtype).unsqueeze(-1)
    return (h * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class AttentionPool(nn.Module):
    """Learned queries (k, dp) cross-attending to a sequence (b, n, d) -> (b, k, dp).

    One layer is a single multi-head cross-attention (no norm, no residual); ``depth > 1`` is a
    cross-attention-only stack (pre-norm attention + feed-forward blocks) over the queries.

    Args:
        dim: width of the pooled tokens (dp).
        dim_context: width of the sequence attended to (d).
        num_pooled_tokens: number of learned queries (k).
        depth: layers.
        heads, dim_head: attention shape (those of the model's stack).
    """

    def __init__(
        self,
        dim: int,
        dim_context: int,
        num_pooled_tokens: int = 1,
        depth: int = 1,
        heads: int = 8,
        dim_head: int = 64,
    ) -> None:
        super().__init__()
        owner = "AttentionPool"
        for name, value in (("num_pooled_tokens", num_pooled_tokens), ("depth", depth)):
            check_positive_int(name, value, owner)
        self.queries = nn.Parameter(torch.randn(num_pooled_tokens, dim) * 1e-2)
        self.pooler: nn.Module
        if depth == 1:
            self.pooler = Attention(dim, heads=heads, dim_context=dim_context, dim_head=dim_head)
        else:
            extra = {} if dim_context == dim else {"cross_attn_dim_context": dim_context}
            self.pooler = CrossAttender(
                dim=dim, depth=depth, heads=heads, attn_dim_head=dim_head, **extra
            )

    def forward(self, context: Tensor, mask: Tensor | None = None) -> Tensor:
        """Pool ``context`` (b, n, d) with its padding ``mask`` (b, n) into (b, k, dp)."""
        queries = repeat(self.queries, "k d -> b k d", b=context.shape[0]).to(context.dtype)
        return self.pooler(queries, context=context, context_mask=mask)


def check_pooling(
    owner: str,
    attn_layers: AttentionLayers,
    average_pool_embed: bool,
    use_cls_token: bool,
    num_cls_tokens: int,
    attn_pool: bool,
) -> None:
    """Refuse pooling combinations that cannot work, at construction."""
    if sum((average_pool_embed, use_cls_token, attn_pool)) > 1:
        raise ValueError(
            f"{owner}: average_pool_embed, use_cls_token and attn_pool each produce the "
            "sequence's representation; choose one"
        )
    check_positive_int("num_cls_tokens", num_cls_tokens, owner)
    if use_cls_token and attn_layers.causal:
        raise ValueError(
            f"{owner}: use_cls_token needs a bidirectional stack (Encoder): the class tokens sit "
            "before the sequence, so under a causal mask they would see none of it"
        )
