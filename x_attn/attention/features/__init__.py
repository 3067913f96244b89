"""Score features: small modules attached to one stage of the manual kernel.

Each feature names the flag that turns it on (``flag``) and acts on one or more stages of
:class:`x_attn.kernels.manual.ScoreHooks`. Any score feature needs the raw scores, so its
presence sends the layer to a kernel that forms them (see :mod:`x_attn.kernels.select`).
Every feature of the attention pipeline (score features and the others) declares itself once
with a :class:`x_attn.attention.features.spec.FeatureSpec` in its own file; the catalog
(:mod:`x_attn.attention.features.catalog`) lists them.
"""

from __future__ import annotations

from torch import Tensor, nn

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
        if not self.features and self.normalizer is None:
            return _PLAIN  # plain softmax: nothing to bind
        return _BoundHooks(list(self.features), self.normalizer, prev_logits)


_PLAIN = ScoreHooks()
