"""entmax-1.5 attention: Adaptively Sparse Transformers (Correia et al., arXiv 1909.00015).

Replaces the softmax by 1.5-entmax (Peters et al., arXiv 1905.05702), which gives exact zeros.
"""

from __future__ import annotations

from entmax import entmax15
from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureSpec


class Entmax15(nn.Module):
    """Normaliser: probabilities = entmax15(logits) along the key axis."""

    def __init__(self, flag: str = "attn_use_entmax15") -> None:
        super().__init__()
        self.flag = flag

    def forward(self, sim: Tensor) -> Tensor:
        if sim.shape[-1] == 0:  # no key (an empty context): no weights, as softmax gives
            return sim
        return entmax15(sim, dim=-1)


ENTMAX15_SPEC = FeatureSpec(
    "use_entmax15",
    "1909.00015",
    "normalize",
    enabled=lambda ctx: ctx.config.use_entmax15,
    build=lambda ctx: Entmax15(flag=ctx.flag("use_entmax15")),
    needs_scores=True,
    slot="normalizer",
)
