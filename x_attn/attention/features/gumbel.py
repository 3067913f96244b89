"""Stochastic attention: the softmax replaced by a Gumbel-softmax sample (Jang et al.,
arXiv 1611.01144; Maddison et al., arXiv 1611.00712), x-transformers' ``gumbel_softmax``.

In training, each query draws Gumbel noise ``g_j = -log(E_j)`` (E_j ~ Exp(1)) per key and
attends with ``softmax((s + g) / tau)`` (``gumbel_softmax_temp`` tau, default 1). With
``gumbel_softmax_hard`` (default) the weights are the one-hot of that sample's argmax, with the
soft sample's gradient (straight-through: ``hard - soft.detach() + soft``), so each query reads
exactly one key. Masked keys are never drawn.

In eval mode x_attn draws no noise (the deterministic limit, as dropout switches off):
``softmax(s / tau)``, and with ``hard`` the one-hot of its argmax, so decoding with a cache
equals the full forward. (x-transformers samples in eval too.) ``log_prob_from_hard_attend``
gives each query's log-probability under the noise-free softmax of the key it attended to,
e.g. for a policy-gradient loss on the sampled choices.

Hard attention (``attn_hard``, x-transformers' name; Velickovic et al., "softmax is not enough
(for sharp out-of-distribution)", arXiv 2410.01104) is the noise-free hard case in training too:
each query reads the key of its largest logit, with the softmax's gradient (straight-through).

Shape legend: b batch, h heads, i queries, j keys.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureContext, FeatureSpec


class GumbelSoftmax(nn.Module):
    """Normaliser: logits (b h i j, masked) -> Gumbel-softmax weights (noise in training)."""

    def __init__(
        self, temp: float, hard: bool, flag: str = "attn_gumbel_softmax", noise: bool = True
    ) -> None:
        super().__init__()
        self.temp, self.hard, self.flag, self.noise = temp, hard, flag, noise

    def forward(self, sim: Tensor) -> Tensor:
        if sim.shape[-1] == 0:  # no key: no weights
            return sim
        if self.training and self.noise:
            draws = torch.empty_like(sim).exponential_().clamp(min=torch.finfo(sim.dtype).tiny)
            sim = sim - draws.log()
        soft = (sim / self.temp).softmax(dim=-1)
        if not self.hard:
            return soft
        one_hot = torch.zeros_like(soft).scatter_(-1, soft.argmax(dim=-1, keepdim=True), 1.0)
        return one_hot - soft.detach() + soft


def log_prob_from_hard_attend(intermediates: Any) -> Tensor:
    """(b, h, i): log-probability, under the noise-free softmax of the logits, of the key each
    query attended to (the argmax of its weights); 0 for a query with no key.

    ``intermediates``: an attention layer's intermediates (``return_intermediates=True``) from
    a kernel that forms the scores (a layer with ``gumbel_softmax`` always does).
    """
    maps, inputs = getattr(intermediates, "maps", None), getattr(intermediates, "inputs", None)
    if maps is None or inputs is None:
        raise ValueError(
            "log_prob_from_hard_attend: pass the intermediates of an attention call that formed "
            "the scores (return_intermediates=True on a layer with gumbel_softmax)"
        )
    logits = maps.logits.to(torch.promote_types(maps.logits.dtype, torch.float32))
    mask = inputs.spec.dense(logits.device)
    if mask is not None:  # finite, so a row with no key has finite gradients too
        logits = logits.masked_fill(~mask, -torch.finfo(logits.dtype).max)
    chosen = maps.probs.argmax(dim=-1, keepdim=True)
    picked = logits.log_softmax(dim=-1).gather(-1, chosen).squeeze(-1)
    return picked if mask is None else torch.where(mask.any(dim=-1), picked, 0.0)


def _build(ctx: FeatureContext) -> GumbelSoftmax:
    temp = ctx.config.gumbel_softmax_temp
    if isinstance(temp, bool) or not isinstance(temp, int | float) or not temp > 0:
        raise ValueError(f"{ctx.flag('gumbel_softmax_temp')} must be a number > 0, got {temp!r}")
    return GumbelSoftmax(
        float(temp), bool(ctx.config.gumbel_softmax_hard), ctx.flag("gumbel_softmax")
    )


GUMBEL_SOFTMAX_SPEC = FeatureSpec(
    "gumbel_softmax",
    "1611.01144",
    "normalize",
    enabled=lambda ctx: ctx.config.gumbel_softmax,
    build=_build,
    needs_scores=True,
    slot="normalizer",
)


HARD_SPEC = FeatureSpec(
    "hard",
    "2410.01104",
    "normalize",
    enabled=lambda ctx: ctx.config.hard,
    build=lambda ctx: GumbelSoftmax(1.0, True, ctx.flag("hard"), noise=False),
    needs_scores=True,
    slot="normalizer",
)
