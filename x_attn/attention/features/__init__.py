"""Score features: small modules attached to one stage of the manual kernel.

Each feature names the flag that turns it on (``flag``) and acts on one or more stages of
:class:`x_attn.kernels.manual.ScoreHooks`. Any score feature needs the raw scores, so its
presence sends the layer to the manual kernel (see :mod:`x_attn.kernels.select`).
"""

from __future__ import annotations

from torch import Tensor, nn

from x_attn.config import AttentionConfig
from x_attn.kernels.manual import ScoreHooks


class ScoreFeature(nn.Module):
    """Base class: identity at every stage."""

    flag: str = ""

    def on_logits(self, sim: Tensor, prev_logits: Tensor | None) -> Tensor:
        return sim

    def on_masked(self, sim: Tensor, mask: Tensor | None) -> Tensor:
        return sim

    def on_probs(self, attn: Tensor) -> Tensor:
        return attn


class _BoundHooks(ScoreHooks):
    """The features of one layer bound to one call's state (the previous layer's logits)."""

    def __init__(
        self, features: list[ScoreFeature], normalizer: nn.Module | None, prev_logits: Tensor | None
    ) -> None:
        self.features, self.normalizer, self.prev_logits = features, normalizer, prev_logits

    def on_logits(self, sim: Tensor) -> Tensor:
        for feature in self.features:
            sim = feature.on_logits(sim, self.prev_logits)
        return sim

    def on_masked(self, sim: Tensor, mask: Tensor | None) -> Tensor:
        for feature in self.features:
            sim = feature.on_masked(sim, mask)
        return sim

    def normalize(self, sim: Tensor) -> Tensor:
        return sim.softmax(dim=-1) if self.normalizer is None else self.normalizer(sim)

    def on_probs(self, attn: Tensor) -> Tensor:
        for feature in self.features:
            attn = feature.on_probs(attn)
        return attn


class ScorePipeline(nn.Module):
    """All score features of one attention layer, in stage order."""

    def __init__(self, features: list[ScoreFeature], normalizer: nn.Module | None) -> None:
        super().__init__()
        self.features = nn.ModuleList(features)
        self.normalizer = normalizer

    @property
    def flags(self) -> list[str]:
        found = list(dict.fromkeys(f.flag for f in self.features))
        if self.normalizer is not None:
            found.append(self.normalizer.flag)
        return found

    def bind(self, prev_logits: Tensor | None = None) -> ScoreHooks:
        return _BoundHooks(list(self.features), self.normalizer, prev_logits)


def build_score_pipeline(
    config: AttentionConfig, heads: int, residual_attn: bool, prefix: str = "attn_"
) -> ScorePipeline:
    """The score features that ``config`` turns on, in the order the stages apply them."""
    from x_attn.attention.features.entmax import Entmax15
    from x_attn.attention.features.residual_attn import ResidualAttention
    from x_attn.attention.features.sparse_topk import SparseTopK
    from x_attn.attention.features.talking_heads import TalkingHeads

    features: list[ScoreFeature] = []
    if residual_attn:
        cross = prefix == "cross_attn_"
        features.append(ResidualAttention("cross_residual_attn" if cross else "residual_attn"))
    if config.uses_pre_talking_heads:
        features.append(TalkingHeads(heads, "pre", flag=_talking_flag(config, "pre", prefix)))
    if config.sparse_topk is not None:
        features.append(SparseTopK(config.sparse_topk, flag=f"{prefix}sparse_topk"))
    if config.uses_post_talking_heads:
        features.append(TalkingHeads(heads, "post", flag=_talking_flag(config, "post", prefix)))
    normalizer = Entmax15(flag=f"{prefix}use_entmax15") if config.use_entmax15 else None
    return ScorePipeline(features, normalizer)


def _talking_flag(config: AttentionConfig, stage: str, prefix: str) -> str:
    return f"{prefix}talking_heads" if config.talking_heads else f"{prefix}{stage}_talking_heads"
