"""Inverted attention: the softmax runs over the queries instead of the keys, as in Slot
Attention (Locatello et al., "Object-Centric Learning with Slot Attention", arXiv 2006.15055),
studied in transformers by Wu et al., "Inverted-Attention Transformers can Learn Object
Representations: Insights from Slot Attention" (UniReps 2023).

Queries (slots) compete for each key: for every key ``j`` the weights over the queries sum to
1; each query then takes the weighted mean of the values, its weights renormalised over the
keys::

    a[i, j] = softmax_i(s[i, j])          w[i, j] = a[i, j] / (sum_j a[i, j] + eps)

With ``sigmoid`` (``cross_attn_sigmoid``, arXiv 2409.04431) the first step is the sigmoid of
each logit instead of the softmax over the queries, then the same renormalisation over the keys
(x-transformers combines the two flags the same way).

Hidden pairs (masked keys, padded queries: the manual kernel sets their logit to
``-finfo.max`` before the normaliser) take weight 0. Since every query's weights depend on all
queries, a causal stack refuses it (later tokens would change earlier ones); x_attn implements
it for cross-attention (``cross_attn_inverted_attention``), whose padded queries the layer hides.

Shape legend: b batch, h heads, i queries, j keys.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureSpec
from x_attn.config import LayersConfig

EPS = 1e-8  # Slot Attention's epsilon of the weighted mean


class InvertedSoftmax(nn.Module):
    """Normaliser: (b, h, i, j) logits -> softmax over the queries, renormalised over the keys."""

    def __init__(self, flag: str = "cross_attn_inverted_attention", sigmoid: bool = False) -> None:
        super().__init__()
        self.flag, self.sigmoid = flag, sigmoid

    def forward(self, sim: Tensor) -> Tensor:
        if sim.shape[-1] == 0 or sim.shape[-2] == 0:  # no key or no query: no weights
            return sim
        hidden = sim <= -torch.finfo(sim.dtype).max
        first = sim.sigmoid() if self.sigmoid else sim.softmax(dim=-2)
        attn = first.masked_fill(hidden, 0.0)  # a hidden column: uniform -> 0
        return attn / (attn.sum(dim=-1, keepdim=True) + EPS)


INVERTED_SPEC = FeatureSpec(
    "inverted_attention",
    "2006.15055",
    "normalize",
    enabled=lambda ctx: ctx.config.inverted_attention,
    build=lambda ctx: InvertedSoftmax(ctx.flag("inverted_attention"), ctx.config.sigmoid),
    needs_scores=True,
    slot="normalizer",
    hides_padded_queries=True,
)


def check_inverted(config: LayersConfig, owner: str, explicit: set[str]) -> None:
    """Refuse inverted attention where a query's weights would read later queries: in
    self-attention (not implemented: x_attn hides padded queries in cross-attention calls only)
    and in a causal stack (later tokens would change earlier outputs)."""
    if "attn_inverted_attention" in explicit and _any(config, "attn"):
        raise ValueError(
            f"{owner}: attn_inverted_attention (softmax over the queries in self-attention) is "
            "not supported by x_attn; inverted attention is implemented for cross-attention: "
            "use cross_attn_inverted_attention"
        )
    if config.causal and _any(config, "cross_attn"):
        raise ValueError(
            f"{owner}: cross_attn_inverted_attention normalises each key's weights over all "
            "queries, so later tokens would change earlier outputs of a causal stack; use it "
            "in an Encoder or a CrossAttender"
        )


def _any(config: LayersConfig, bucket: str) -> bool:
    """Whether any layer of ``bucket`` ("attn" / "cross_attn") turns inverted attention on."""
    own = [vals for b, name, vals in config.layer_values if (b, name) == (bucket, _NAME)]
    return bool(getattr(config, bucket).inverted_attention) or any(any(v) for v in own)


_NAME = "inverted_attention"


def query_padding_mask(mask: Tensor, keys: int, attn_mask: Tensor | None = None) -> Tensor:
    """(b, 1, i, keys) bool: padded queries (``mask`` (b, i) False) see no key, so the
    normaliser over the queries leaves them out; combined with a caller's ``attn_mask``."""
    rows = mask[:, None, :, None].expand(-1, 1, -1, keys)
    return rows if attn_mask is None else attn_mask & rows
