"""Sigmoid attention: each weight is ``sigmoid(s[i, j])`` of its own logit, with no
normalisation over the keys (Ramapuram et al., "Theory, Analysis, and Best Practices for
Sigmoid Self-Attention", arXiv 2409.04431).

The paper adds a bias ``b`` to the logits (``b = -log n`` for n keys) to keep the weights'
sum near 1 at initialisation; x-transformers' ``attn_sigmoid`` / ``cross_attn_sigmoid`` use
``b = 0``, and so does x_attn, so the two libraries agree on copied weights::

    a[i, j] = sigmoid(q_i . k_j * scale)

A masked key's logit is ``-finfo.max`` before the normaliser, so its weight is exactly 0 (no
renormalisation spreads weight back onto it); a row with no key is all zeros. Rows need not
sum to 1. With ``cross_attn_inverted_attention`` the weights are the same sigmoids, renormalised
over the keys (:mod:`x_attn.attention.features.inverted` applies both).

Shape legend: b batch, h heads, i queries, j keys.
"""

from __future__ import annotations

from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureSpec


class SigmoidAttention(nn.Module):
    """Normaliser: logits (b h i j, masked) -> sigmoid of each, no sum over the keys."""

    def __init__(self, flag: str = "attn_sigmoid") -> None:
        super().__init__()
        self.flag = flag

    def forward(self, sim: Tensor) -> Tensor:
        return sim.sigmoid()


SIGMOID_SPEC = FeatureSpec(
    "sigmoid",
    "2409.04431",
    "normalize",
    # with inverted attention, InvertedSoftmax takes the sigmoid itself (one normaliser)
    enabled=lambda ctx: ctx.config.sigmoid and not ctx.config.inverted_attention,
    build=lambda ctx: SigmoidAttention(flag=ctx.flag("sigmoid")),
    needs_scores=True,
    slot="normalizer",
)
