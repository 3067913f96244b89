"""The feature catalog: every attention feature's spec, and the parts of a layer built from it.

Adding a feature: its own file with the module and a :class:`FeatureSpec`, one line in
``FEATURES`` (the order is the order within a stage), the option in :class:`AttentionConfig`,
and a :class:`x_attn.registry.FlagCase` so every invariant runs on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from torch import nn

from x_attn.attention.features import ScorePipeline
from x_attn.attention.features.attn_on_attn import AOA_SPEC, LinearOutput
from x_attn.attention.features.cog_signed import COG_SIGNED_SPEC
from x_attn.attention.features.cope import COPE_SPEC
from x_attn.attention.features.entmax import ENTMAX15_SPEC
from x_attn.attention.features.exclusive import EXCLUSIVE_SPEC
from x_attn.attention.features.forgetting import FORGETTING_SPEC
from x_attn.attention.features.gated_values import GATED_VALUES_SPEC
from x_attn.attention.features.gumbel import GUMBEL_SOFTMAX_SPEC, HARD_SPEC
from x_attn.attention.features.head_rmsnorm import QK_RMSNORM_SPEC, VALUE_RMSNORM_SPEC
from x_attn.attention.features.head_scale import HEAD_SCALE_SPEC
from x_attn.attention.features.inverted import INVERTED_SPEC
from x_attn.attention.features.l2_distance import L2_DISTANCE_SPEC
from x_attn.attention.features.laser import LASER_LOG_SPEC, LASER_VALUES_SPEC
from x_attn.attention.features.linear_attn import LINEAR_ATTN_SPEC
from x_attn.attention.features.linformer import LINFORMER_SPEC
from x_attn.attention.features.lsh import LSH_SPEC
from x_attn.attention.features.memory_kv import MEMORY_KV_SPEC
from x_attn.attention.features.multi_token import MTA_HEAD_NORM_SPEC, MTA_SPEC
from x_attn.attention.features.null_keys import HEAD_SINK_SPEC, ZERO_KV_SPEC
from x_attn.attention.features.performer import PERFORMER_SPEC
from x_attn.attention.features.polar import POLAR_SPEC
from x_attn.attention.features.qk_norm import QK_NORM_SPEC
from x_attn.attention.features.rel_proj_bias import REL_PROJ_BIAS_SPEC
from x_attn.attention.features.residual_attn import RESIDUAL_ATTN_SPEC
from x_attn.attention.features.shaw import SHAW_SPEC
from x_attn.attention.features.sigmoid_attn import SIGMOID_SPEC
from x_attn.attention.features.softclamp import SOFTCLAMP_LOGITS_SPEC
from x_attn.attention.features.sparse import BIGBIRD_SPEC, SPARSE_SPEC
from x_attn.attention.features.sparse_topk import SPARSE_TOPK_SPEC
from x_attn.attention.features.spec import (
    NAMED_STAGES,
    SCORE_STAGES,
    FeatureContext,
    FeatureSpec,
)
from x_attn.attention.features.talking_heads import POST_TALKING_SPEC, PRE_TALKING_SPEC
from x_attn.attention.features.value_head_gates import VALUE_HEAD_GATES_SPEC
from x_attn.attention.features.value_residual import VALUE_RESIDUAL_SPEC
from x_attn.attention.features.window import WINDOW_SPEC
from x_attn.attention.projections import MultiHeadProjection, Projection
from x_attn.attention.projections.collaborative import COLLAB_HEADS_SPEC
from x_attn.attention.projections.latent import LATENT_KV_SPEC
from x_attn.cache import CacheEntry, KVEntry
from x_attn.kernels.registry import Need
from x_attn.masks.spec import MaskRule

FEATURES: tuple[FeatureSpec, ...] = (
    COLLAB_HEADS_SPEC,
    LATENT_KV_SPEC,
    LSH_SPEC,
    QK_NORM_SPEC,
    QK_RMSNORM_SPEC,
    POLAR_SPEC,
    VALUE_RESIDUAL_SPEC,
    VALUE_RMSNORM_SPEC,
    LASER_VALUES_SPEC,
    L2_DISTANCE_SPEC,
    LINEAR_ATTN_SPEC,
    PERFORMER_SPEC,
    SHAW_SPEC,
    REL_PROJ_BIAS_SPEC,
    FORGETTING_SPEC,
    COPE_SPEC,
    WINDOW_SPEC,
    SPARSE_SPEC,
    BIGBIRD_SPEC,
    LINFORMER_SPEC,
    MEMORY_KV_SPEC,
    ZERO_KV_SPEC,
    HEAD_SINK_SPEC,
    RESIDUAL_ATTN_SPEC,
    PRE_TALKING_SPEC,
    SOFTCLAMP_LOGITS_SPEC,
    MTA_SPEC,
    SPARSE_TOPK_SPEC,
    POST_TALKING_SPEC,
    ENTMAX15_SPEC,
    GUMBEL_SOFTMAX_SPEC,
    HARD_SPEC,
    SIGMOID_SPEC,
    COG_SIGNED_SPEC,
    LASER_LOG_SPEC,
    INVERTED_SPEC,
    MTA_HEAD_NORM_SPEC,
    HEAD_SCALE_SPEC,
    VALUE_HEAD_GATES_SPEC,
    GATED_VALUES_SPEC,
    AOA_SPEC,
    EXCLUSIVE_SPEC,
)


@dataclass
class AttentionParts:
    """The parts of one attention layer, by stage, and what its kernel must support.

    Attributes:
        projection: the project stage (its "qk" transforms installed).
        named: (attribute, module or None) of every feature of the "qk", "values", "extend",
            "bias" and "heads" stages in the catalog, for the Attention module to register.
        extensions: the active extend-stage modules, in order.
        values: the active values-stage modules, in order.
        biases: the active bias-stage modules (``BiasStage``: query-dependent logit bias, read
            from one ``BiasCall`` per call), in order.
        head_stages: the active "heads"-stage modules (per-head output), in order.
        scores: the score features and the normalizer.
        output: the output stage.
        rules: mask rules of self-attention calls (besides causality).
        new_entry: factory of the layer's self-attention cache entries.
        needs: what the layer's kernel must support, each with the flag that asks.
        scale: the logit scale (see :attr:`FeatureContext.scale`).
    """

    projection: Projection
    named: list[tuple[str, nn.Module | None]]
    extensions: tuple[nn.Module, ...]
    values: tuple[nn.Module, ...]
    biases: tuple[nn.Module, ...]
    head_stages: tuple[nn.Module, ...]
    scores: ScorePipeline
    output: nn.Module
    scale: float
    rules: tuple[MaskRule, ...] = ()
    new_entry: Callable[[], CacheEntry] = KVEntry
    needs: list[Need] = field(default_factory=list)
    neighbour_flags: tuple[str, ...] = ()  # flags of features that read neighbouring positions
    uncacheable: str | None = None  # why the layer cannot decode with a cache (None: it can)
    hides_padded_queries: bool = False  # a feature normalises over the queries


def assemble(ctx: FeatureContext, owner: str = "Attention") -> AttentionParts:
    """Build the parts of a layer from the features its context turns on."""
    active = [spec for spec in FEATURES if spec.enabled(ctx)]
    _check_slots(active, ctx, owner)
    _check_biases(active, ctx, owner)
    projection = _slot_module(active, "projection", ctx) or _default_projection(ctx)
    for spec in active:
        if spec.wrap_projection is not None:
            projection = spec.wrap_projection(ctx)(projection)
    bias = ctx.config.out_bias
    ctx = replace(ctx, projection=projection)
    _check_transformable(active, projection, ctx, owner)
    ctx = replace(ctx, feature_scale=_scale(active, ctx, owner))
    qk = [(s, s.build(ctx)) for s in active if s.stage == "qk"]
    projection.use_head_transforms([m for _, m in qk])  # before the others read it
    later = [s for s in active if s.slot != "projection" and s.stage != "qk" and s.build]
    built = qk + [(s, s.build(ctx)) for s in later]
    scores = [m for s, m in built if s.stage in SCORE_STAGES]
    output = next((m for s, m in built if s.slot == "output"), None)
    rules = tuple(rule for s in active if s.rules is not None for rule in s.rules(ctx))
    entry = next((s.cache_entry(ctx) for s in active if s.cache_entry is not None), KVEntry)
    for spec in active:
        if spec.wrap_entry is not None:
            entry = _wrapped(entry, spec.wrap_entry(ctx))
    return AttentionParts(
        projection=projection,
        named=_named(built),
        extensions=_in_stage(built, "extend"),
        values=_in_stage(built, "values"),
        biases=_in_stage(built, "bias"),
        head_stages=_in_stage(built, "heads"),
        scores=ScorePipeline(scores, next((m for s, m in built if s.slot == "normalizer"), None)),
        output=output or LinearOutput(projection.heads * projection.v_dim, ctx.dim_out, bias),
        rules=rules,
        new_entry=entry,
        needs=_needs(active, ctx),
        scale=ctx.scale,
        neighbour_flags=tuple(s.flag(ctx) for s in active if s.reads_neighbours),
        uncacheable=next((s.uncacheable for s in active if s.uncacheable), None),
        hides_padded_queries=any(s.hides_padded_queries for s in active),
    )


def _wrapped(
    make: Callable[[], CacheEntry], wrap: Callable[[CacheEntry], CacheEntry]
) -> Callable[[], CacheEntry]:
    """A factory of ``make``'s entries, each wrapped by ``wrap``."""
    return lambda: wrap(make())


def _needs(active: list[FeatureSpec], ctx: FeatureContext) -> list[Need]:
    """Kernel capabilities the active features need, each with its flag."""
    needs = []
    for spec in active:
        capabilities = [*(["scores"] if spec.scores_needed(ctx) else []), *spec.needs]
        capabilities += ["bias"] if spec.stage == "bias" else []  # it adds to the logits
        capabilities += [f"rule:{rule.kind}" for rule in (spec.rules(ctx) if spec.rules else ())]
        needs += [Need(spec.flag(ctx), capability) for capability in capabilities]
    return needs


def _named(built: list[tuple[FeatureSpec, nn.Module]]) -> list[tuple[str, nn.Module | None]]:
    """(attribute, module or None) for every feature of a named stage in the catalog."""
    on = {spec.name: module for spec, module in built}
    return [(s.attr or s.name, on.get(s.name)) for s in FEATURES if s.stage in NAMED_STAGES]


def _in_stage(built: list[tuple[FeatureSpec, nn.Module]], stage: str) -> tuple[nn.Module, ...]:
    """The built modules of one stage, in catalog order."""
    return tuple(module for spec, module in built if spec.stage == stage)


def _check_transformable(
    active: list[FeatureSpec], projection: Projection, ctx: FeatureContext, owner: str
) -> None:
    """Refuse "qk" and "values" transforms on a projection that cannot apply them."""
    transforms = [s.flag(ctx) for s in active if s.stage in ("qk", "values")]
    if transforms and not projection.transformable:
        slot = next(s.flag(ctx) for s in active if s.slot == "projection")
        raise ValueError(
            f"{owner}: {', '.join(transforms)} transform the per-head keys or values, which "
            f"{slot} never forms (it attends through a shared latent); drop one of them"
        )


def _scale(active: list[FeatureSpec], ctx: FeatureContext, owner: str) -> float | None:
    """The logit scale an active feature implies (at most one may set it)."""
    setting = [spec for spec in active if spec.scale is not None]
    if len(setting) > 1:
        flags = " and ".join(spec.flag(ctx) for spec in setting)
        raise ValueError(f"{owner}: {flags} both set the attention logit scale; choose one")
    return setting[0].scale(ctx) if setting else None


def _default_projection(ctx: FeatureContext) -> Projection:
    kv_heads = ctx.config.key_value_heads(ctx.heads)
    if ctx.heads % kv_heads:
        divisors = [d for d in range(1, ctx.heads + 1) if ctx.heads % d == 0]
        raise ValueError(
            f"Attention: {ctx.flag('kv_heads')}={kv_heads} does not divide heads={ctx.heads}: "
            f"each key/value head serves a group of heads / kv_heads query heads; use one of "
            f"{divisors}"
        )
    return MultiHeadProjection(
        ctx.dim,
        ctx.heads,
        ctx.config.dim_head,
        ctx.dim_context,
        kv_heads=kv_heads,
        dim_latent_q=ctx.config.dim_latent_q,
        bias=ctx.config.qkv_bias,
    )


def _check_biases(active: list[FeatureSpec], ctx: FeatureContext, owner: str) -> None:
    """The bias options act on the default multi-head projection and linear output only."""
    for option, slot in (("qkv_bias", "projection"), ("out_bias", "output")):
        other = next((s for s in active if s.slot == slot), None)
        if getattr(ctx.config, option) and other is not None:
            raise ValueError(
                f"{owner}: {ctx.flag(option)} adds biases to the plain multi-head {slot}, which "
                f"{other.flag(ctx)} replaces; drop one"
            )


def _slot_module(active: list[FeatureSpec], slot: str, ctx: FeatureContext) -> nn.Module | None:
    return next((spec.build(ctx) for spec in active if spec.slot == slot and spec.build), None)


def _check_slots(active: list[FeatureSpec], ctx: FeatureContext, owner: str) -> None:
    """At most one active feature per exclusive slot (a cache entry factory takes the "cache"
    slot too); a clash names both flags."""
    taken: dict[str, FeatureSpec] = {}
    for spec in active:
        slots = {spec.slot} | ({"cache"} if spec.cache_entry is not None else set())
        for slot in slots - {None}:
            other = taken.setdefault(slot, spec)
            if other is not spec:
                raise ValueError(
                    f"{owner}: {other.flag(ctx)} and {spec.flag(ctx)} both replace the layer's "
                    f"{slot}; choose one"
                )
