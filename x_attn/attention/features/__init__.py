"""Score features: small modules attached to one stage of the manual kernel.

Each feature names the flag that turns it on (``flag``) and acts on one or more stages of
:class:`x_attn.kernels.manual.ScoreHooks`. Any score feature needs the raw scores, so its
presence sends the layer to a kernel that forms them (see :mod:`x_attn.kernels.select`).
A feature that needs more than the scores of a call (the layer's cache entry, to keep state
between decoding calls; the mask description, for query/key positions and padding) overrides
:meth:`ScoreFeature.for_call`, which receives a :class:`ScoreCall`.
Every feature of the attention pipeline (score features and the others) declares itself once
with a :class:`x_attn.attention.features.spec.FeatureSpec` in its own file; the catalog
(:mod:`x_attn.attention.features.catalog`) lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from torch import Tensor, nn

from x_attn.kernels.manual import ScoreHooks

if TYPE_CHECKING:
    from x_attn.cache.entry import CacheEntry
    from x_attn.masks.spec import AttnMask


@dataclass(frozen=True, slots=True)
class ScoreCall:
    """What one attention call tells its score features besides the scores.

    Attributes:
        prev_logits: the previous layer's logits (residual attention), or None.
        entry: the layer's cache entry of this call (a fresh one without a cache), or None.
        mask: the call's mask description: query and key positions, key padding, free keys.
    """

    prev_logits: Tensor | None = None
    entry: CacheEntry | None = None
    mask: AttnMask | None = None


class ScoreStages(Protocol):
    """The stages a score feature acts on (a :class:`ScoreFeature`, or its per-call view)."""

    def on_logits(self, sim: Tensor, prev_logits: Tensor | None) -> Tensor: ...

    def on_masked(self, sim: Tensor, mask: Tensor | None) -> Tensor: ...

    def on_probs(self, attn: Tensor) -> Tensor: ...


class ScoreFeature(nn.Module):
    """Base class: identity at every stage."""

    flag: str = ""

    def for_call(self, call: ScoreCall) -> ScoreStages:
        """The stages for one call; a feature that reads the call's entry or mask description
        returns an object bound to ``call`` (the module itself holds no per-call state)."""
        return self

    def on_logits(self, sim: Tensor, prev_logits: Tensor | None) -> Tensor:
        return sim

    def on_masked(self, sim: Tensor, mask: Tensor | None) -> Tensor:
        return sim

    def on_probs(self, attn: Tensor) -> Tensor:
        return attn


class _BoundHooks(ScoreHooks):
    """The features of one layer bound to one call (see :class:`ScoreCall`)."""

    def __init__(
        self, features: list[ScoreFeature], normalizer: nn.Module | None, call: ScoreCall
    ) -> None:
        self.features = [feature.for_call(call) for feature in features]
        self.normalizer, self.prev_logits = normalizer, call.prev_logits

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

    def bind(
        self,
        prev_logits: Tensor | None = None,
        entry: CacheEntry | None = None,
        mask: AttnMask | None = None,
    ) -> ScoreHooks:
        """The hooks of one call: the previous layer's logits, the layer's cache entry and the
        call's mask description."""
        if not self.features and self.normalizer is None:
            return _PLAIN  # plain softmax: nothing to bind
        return _BoundHooks(
            list(self.features), self.normalizer, ScoreCall(prev_logits, entry, mask)
        )


_PLAIN = ScoreHooks()
