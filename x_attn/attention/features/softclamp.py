"""Soft-capping with tanh, as in Gemma 2 (Gemma Team, arXiv 2408.00118).

``softclamp(t, c) = c * tanh(t / c)``: close to ``t`` for ``|t| << c``, smoothly bounded by
``c``. ``attn_softclamp_logits`` caps the attention logits (after the positional bias and the
other logit features, before masking) at ``attn_logit_softclamp_value`` (default 50); the
stack flag ``softclamp_output`` caps the stack's output before its final norm at
``softclamp_output_value`` (default 30). Capping the logits needs the scores, so a layer with
it runs on the manual kernel.
"""

from __future__ import annotations

from torch import Tensor

from x_attn.attention.features import ScoreFeature
from x_attn.attention.features.spec import FeatureSpec
from x_attn.layers.activations import softclamp


class LogitSoftClamp(ScoreFeature):
    """Score feature: logits -> ``value * tanh(logits / value)`` before masking."""

    def __init__(self, value: float, flag: str = "attn_softclamp_logits") -> None:
        super().__init__()
        self.value, self.flag = value, flag

    def on_logits(self, sim: Tensor, prev_logits: Tensor | None) -> Tensor:
        return softclamp(sim, self.value)


SOFTCLAMP_LOGITS_SPEC = FeatureSpec(
    "softclamp_logits",
    "2408.00118",
    "logits",
    enabled=lambda ctx: ctx.config.softclamp_logits,
    build=lambda ctx: LogitSoftClamp(
        ctx.config.logit_softclamp_value, flag=ctx.flag("softclamp_logits")
    ),
    needs_scores=True,
)
