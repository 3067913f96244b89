"""How an attention feature declares itself: one :class:`FeatureSpec` in the feature's own file.

A spec names the flag, the paper, the pipeline stage the feature attaches to, whether it needs
the raw scores (then only kernels with the ``"scores"`` capability can run the layer), and an
exclusive slot when the feature replaces a part that exists once per layer ("projection",
"normalizer", "output", "cache"). Besides a module, a feature may contribute mask rules for
self-attention calls (a window, global tokens, ...), the self-attention cache entry of its
layers (slot "cache": a ring buffer, a latent, a running state), a wrapper around whatever
entry the layer has (to keep more state, e.g. the last query rows of a convolution over the
scores), further kernel capabilities it needs and the logit scale it implies (QK-norm's
temperature).

The stages of modules that act on head tensors (see :mod:`x_attn.attention.features.stages`):
"qk" (per-head query/key transforms inside the projection, before positions: QK-norm),
"values" (the values of the new key rows, before the cache: value residual, value RMSNorm),
"heads" (the per-head attention output, with the query input, before the heads merge: head
scale, value gates, MTA's head norm). :mod:`x_attn.attention.features.catalog` lists the specs
and builds a layer's parts from them; Attention never tests a flag itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from x_attn.config import AttentionConfig, LayersConfig
from x_attn.masks.spec import MaskRule

if TYPE_CHECKING:
    from x_attn.attention.projections.base import Projection
    from x_attn.cache.entry import CacheEntry

Stage = Literal[
    "project",
    "qk",
    "values",
    "bias",
    "extend",
    "mask",
    "cache",
    "logits",
    "masked",
    "normalize",
    "probs",
    "heads",
    "output",
]
SCORE_STAGES: tuple[Stage, ...] = ("logits", "masked", "probs")
# stages whose modules are attributes of the Attention module (named by ``attr`` or ``name``)
NAMED_STAGES: tuple[Stage, ...] = ("qk", "values", "extend", "bias", "heads")


@dataclass(frozen=True)
class FeatureContext:
    """What a feature may read when it is built for one attention layer.

    Attributes:
        dim: model dim of the queries' input.
        heads: query heads.
        dim_context: context dim of cross-attention (None = ``dim``).
        config: the layer's :class:`AttentionConfig`.
        prefix: flag prefix of the layer ("attn_" or "cross_attn_"), for messages.
        residual_attn: the stack's residual-attention flag for this kind of layer.
        layer: index of the layer among its stack's layers of the same kind (self- or
            cross-attention), from 0; 0 for a layer built on its own.
        value_residual: the stack's value residual role for this layer: "source" (the first
            layer of its kind, whose values the later ones mix in), "fixed" or "learned" (the
            mix of a later layer), None (no value residual).
        projection: the layer's projection, once the project stage is built.
        stack: the stack's flags, for the self-attention layers of a stack (positional
            features such as Shaw's relative embeddings read them); None otherwise.
        rotary_dim: the stack's rotary dim (None without rotary positions), for projections
            that size a separate rotary part by it.
        feature_scale: the logit scale an active feature implies (QK-norm), once assembled.
        causal: the layer masks the future (self-attention of a causal stack).
    """

    dim: int
    heads: int
    dim_context: int | None
    config: AttentionConfig
    prefix: str = "attn_"
    residual_attn: bool = False
    layer: int = 0
    value_residual: str | None = None
    projection: Projection | None = None
    stack: LayersConfig | None = None
    rotary_dim: int | None = None
    feature_scale: float | None = None
    causal: bool = False

    @property
    def scale(self) -> float:
        """The logit scale: a feature's (QK-norm's temperature), else the projection's, else
        ``dim_head ** -0.5``."""
        if self.feature_scale is not None:
            return self.feature_scale
        scale = None if self.projection is None else self.projection.scale
        return self.config.dim_head**-0.5 if scale is None else scale

    @property
    def dim_out(self) -> int:
        """Width of the layer's output (``dim_out``, default ``dim``)."""
        return self.config.dim_out or self.dim

    def flag(self, name: str) -> str:
        """The user-facing flag of an attention option, e.g. "sparse_topk" -> "attn_sparse_topk"."""
        return f"{self.prefix}{name}"


@dataclass(frozen=True)
class FeatureSpec:
    """One feature of the attention pipeline, declared once.

    Attributes:
        name: the option's name (the config field, e.g. "sparse_topk").
        paper: arXiv id of the paper it implements ("" for none).
        stage: where it attaches: "project", "qk" (query/key transforms before positions),
            "values" (new values before the cache), "extend" (more keys/values), "bias" (a
            query-dependent logit bias over the held keys, possibly wrapping the score hooks;
            it receives the call's cache entry, to read state a ``wrap_entry`` keeps),
            "mask", "cache", "logits", "masked", "normalize", "probs" (score stages), "heads" (a
            module on the per-head output (b, h, n, dv) and the query input, before the heads
            are merged) or "output".
        enabled: whether a layer's context turns it on.
        build: the module for a layer that turns it on (None: the feature has no module).
        needs_scores: only kernels that form the scores can run it (a bool, or a function of
            the layer's context when that depends on an option).
        slot: exclusive part it replaces ("projection", "normalizer", "output", "cache").
        attr: attribute name on the Attention module (its state-dict prefix) for "qk",
            "values", "extend" and "heads" modules (default: ``name``).
        flag_of: the user-facing flag for messages (default: prefix + name).
        rules: mask rules it adds to self-attention calls (kernels then need "rule:<kind>").
        cache_entry: factory of its layers' self-attention cache entries (slot "cache").
        wrap_entry: for a layer's context, a function that wraps the layer's self-attention
            entry (whichever kind) in one that keeps more state; wrappers compose.
        wrap_projection: for a layer's context, a function that wraps the layer's projection
            (whichever head layout) in one that transforms its queries and keys (a feature
            map of linear attention); applied in catalog order, after the projection is built.
        needs: further kernel capabilities it needs (e.g. "cache:state").
        scale: the logit scale it implies instead of ``dim_head ** -0.5`` (at most one active
            feature may set it).
        uncacheable: why a layer with it can neither decode with a KV cache nor take
            Transformer-XL memories (None: it can); generation then runs without a cache.
        hides_padded_queries: it normalises over the queries, so padded queries (the
            stack's ``mask``) must be hidden from it in cross-attention calls too.
        reads_neighbours: it mixes neighbouring positions (a convolution over rows or keys),
            so padding placed between real positions changes a row's result; wrappers refuse
            to create such gaps (memory tokens in front of left padding).
    """

    name: str
    paper: str
    stage: Stage
    enabled: Callable[[FeatureContext], bool]
    build: Callable[[FeatureContext], Any] | None = None
    needs_scores: bool | Callable[[FeatureContext], bool] = False
    slot: str | None = None
    attr: str | None = None
    flag_of: Callable[[FeatureContext], str] | None = None
    rules: Callable[[FeatureContext], tuple[MaskRule, ...]] | None = None
    cache_entry: Callable[[FeatureContext], Callable[[], CacheEntry]] | None = None
    wrap_entry: Callable[[FeatureContext], Callable[[CacheEntry], CacheEntry]] | None = None
    wrap_projection: Callable[[FeatureContext], Callable[[Projection], Projection]] | None = None
    needs: tuple[str, ...] = ()
    scale: Callable[[FeatureContext], float] | None = None
    reads_neighbours: bool = False
    uncacheable: str | None = None
    hides_padded_queries: bool = False

    def flag(self, ctx: FeatureContext) -> str:
        return self.flag_of(ctx) if self.flag_of is not None else ctx.flag(self.name)

    def scores_needed(self, ctx: FeatureContext) -> bool:
        """Whether this feature, as ``ctx`` configures it, needs the raw scores."""
        return self.needs_scores(ctx) if callable(self.needs_scores) else self.needs_scores
