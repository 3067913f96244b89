"""Checks of flag combinations and flag types, made at construction.

Every check raises ValueError / TypeError naming the argument, what is wrong and the fix. The
checks of forward inputs live in :mod:`x_attn.validation_inputs`; they are re-exported here,
so ``from x_attn.validation import check_cache`` (and the like) keeps working.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from x_attn.attention.features.inverted import check_inverted
from x_attn.config import LayersConfig
from x_attn.layer_plan import describe_plan, refuse_unread_options
from x_attn.layers.plan import stack_types
from x_attn.positional.checks import validate_positional
from x_attn.utils import check_positive_int
from x_attn.validation_inputs import (
    check_batch_index,
    check_bool_mask,
    check_cache,
    check_float_input,
    check_mems,
    check_seq_start_pos,
    merge_kv_mask,
    normalize_attn_mask,
    token_ids,
)
from x_attn.validation_structure import reversible_refusals, validate_structure

__all__ = [
    # construction checks (this module)
    "check_field_types",
    "check_value_type",
    "stack_layer_types",
    "validate_layers",
    # forward-input checks, re-exported from x_attn.validation_inputs
    "check_batch_index",
    "check_bool_mask",
    "check_cache",
    "check_float_input",
    "check_mems",
    "check_seq_start_pos",
    "merge_kv_mask",
    "normalize_attn_mask",
    "token_ids",
]

# annotation (as written in x_attn.config) -> accepted Python types; None allowed if "| None"
_SCALARS: dict[str, tuple[type, ...]] = {
    "bool": (bool,),
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "NormKind": (str,),
    "tuple[str, ...]": (tuple,),
    "tuple[int, ...]": (tuple,),
}


def check_field_types(config: Any, owner: str, prefix: str) -> None:
    """TypeError naming the flag when a value has the wrong type (e.g. ``causal="yes"``)."""
    for f in fields(config):
        annotation = str(f.type)
        optional = annotation.endswith(" | None")
        accepted = _SCALARS.get(annotation.removesuffix(" | None"))
        value = getattr(config, f.name)
        if accepted is None or (optional and value is None):
            continue  # nested configs are checked on their own
        wrong_bool = isinstance(value, bool) and bool not in accepted
        if wrong_bool or not isinstance(value, accepted):
            wanted = " or ".join(t.__name__ for t in accepted) + (" or None" if optional else "")
            raise TypeError(
                f"{owner}: '{prefix}{f.name}' must be {wanted}, got {type(value).__name__} "
                f"{value!r}"
            )


def check_value_type(name: str, value: Any, annotation: str, owner: str) -> None:
    """TypeError naming ``name`` when ``value`` does not fit a scalar ``annotation``.

    Annotations other than the scalars of ``_SCALARS`` (optionally ``| None``) are not checked.
    """
    optional = annotation.endswith(" | None")
    accepted = _SCALARS.get(annotation.removesuffix(" | None"))
    if accepted is None or (optional and value is None):
        return
    if (isinstance(value, bool) and bool not in accepted) or not isinstance(value, accepted):
        wanted = " or ".join(t.__name__ for t in accepted) + (" or None" if optional else "")
        raise TypeError(f"{owner}: '{name}' must be {wanted}, got {type(value).__name__} {value!r}")


def validate_layers(config: LayersConfig, owner: str, explicit: set[str]) -> None:
    """Refuse flag combinations that cannot work; ``explicit`` = keywords the user passed."""
    for name in ("dim", "heads"):
        check_positive_int(name, getattr(config, name), owner)
    validate_structure(config, owner, explicit)
    validate_positional(config, owner)
    _validate_latent_positions(config, owner, explicit)
    _validate_layer_types(config, owner)
    refuse_unread_options(config, stack_layer_types(config), owner, explicit)
    _validate_residual_rules(config, owner, explicit)
    if config.reversible:
        _validate_reversible(config, owner)
    if config.position_infused_attn and config.dim % 2:
        raise ValueError(f"{owner}: position_infused_attn needs an even dim, got dim={config.dim}")
    _validate_self_only(owner, explicit)
    _validate_mta(config, owner, explicit)
    check_inverted(config, owner, explicit)


# self-attention-only mechanisms: cross_attn_<name> prefix -> why cross-attention cannot run it
_SELF_ONLY = {
    "cross_attn_mta": "Multi-Token Attention convolves self-attention maps over query and key "
    "positions; cross-attention layers do not support it (attn_mta acts on the self-attention "
    "layers only)",
    "cross_attn_lsh": "LSH attention shares queries and keys (keys are the normalised queries), "
    "which cross-attention cannot (its keys come from the context; attn_lsh acts on "
    "self-attention layers)",
    "cross_attn_linformer": "Linformer projects a sequence's own keys over their fixed maximum "
    "length, and a cross-attention context has no such length here (attn_linformer acts on "
    "self-attention layers)",
    **{
        f"cross_attn_{name}": f"{what} is a mask over a sequence's own positions, and a "
        f"cross-attention context shares no positions with the queries (attn_{name} acts on "
        "self-attention layers)"
        for name, what in (
            ("window", "a sliding window"),
            ("global_tokens", "the window's global tokens"),
            ("sparse_pattern", "a Sparse Transformer pattern"),
            ("sparse_block", "a Sparse Transformer pattern"),
            ("sparse_summary", "a Sparse Transformer pattern"),
            ("bigbird", "BigBird's block pattern"),
        )
    },
}


def _validate_self_only(owner: str, explicit: set[str]) -> None:
    """Mechanisms over a sequence's own positions act on self-attention layers only."""
    for prefix, why in _SELF_ONLY.items():
        cross = sorted(k for k in explicit if k.startswith(prefix))
        if cross:
            raise ValueError(f"{owner}: {cross[0]}: {why}; drop {', '.join(cross)}")


def _validate_mta(config: LayersConfig, owner: str, explicit: set[str]) -> None:
    """Multi-Token Attention acts on the self-attention layers chosen."""
    if not config.attn.mta:
        return
    count = stack_layer_types(config).count("a")
    if count == 0:
        raise ValueError(
            f"{owner}: attn_mta=True acts on self-attention layers, but the stack has none; "
            "drop attn_mta"
        )
    chosen = config.attn.mta_layers or ()
    if any(index >= count for index in chosen):
        raise ValueError(
            f"{owner}: attn_mta_layers={chosen} names a layer past the stack's {count} "
            f"self-attention layers (indices 0 to {count - 1})"
        )


def _validate_latent_positions(config: LayersConfig, owner: str, explicit: set[str]) -> None:
    """Multi-head latent attention takes positions through its decoupled rotary keys only."""
    if "cross_attn_latent_rope_subheads" in explicit:
        raise ValueError(
            f"{owner}: cross_attn_latent_rope_subheads: cross-attention has no positions, so "
            "it has no rotary keys; drop it (attn_latent_rope_subheads sets self-attention's)"
        )
    if config.attn.use_latent_kv and config.position_infused_attn:
        raise ValueError(
            f"{owner}: attn_use_latent_kv and position_infused_attn: keys and values come from "
            "one latent, so positions cannot enter the keys without the values; use "
            "rotary_pos_emb (decoupled rotary keys) or an additive bias instead"
        )
    if config.attn.use_latent_kv and config.shaw_rel_pos:
        raise ValueError(
            f"{owner}: attn_use_latent_kv and shaw_rel_pos: Shaw's relative keys and values "
            "act on per-head queries and value mixes, which absorbed latent decoding never "
            "forms; use rotary_pos_emb (decoupled rotary keys) or an additive bias instead"
        )


def stack_layer_types(config: LayersConfig) -> tuple[str, ...]:
    """The layer letters of the modules ``config`` builds (see x_attn.layers.plan)."""
    return stack_types(config)


def _validate_layer_types(config: LayersConfig, owner: str) -> None:
    """A 'c' layer is cross-attention: the cross flags and custom_layers must agree."""
    types = stack_layer_types(config)
    if "a" not in types:
        _refuse_self_attention_flags(config, types, owner)
    width = config.attn.dim_context
    if "a" in types and width is not None and width != config.dim:
        raise ValueError(
            f"{owner}: attn_dim_context={width} sets the key/value input width of every "
            f"attention layer, but self-attention layers read x (width dim={config.dim}); use "
            f"cross_attn_dim_context={width} for the cross-attention layers only"
        )
    if config.custom_layers is None:
        return
    if (config.cross_attend or config.only_cross) and "c" not in types:
        flag = "only_cross" if config.only_cross else "cross_attend"
        raise ValueError(
            f"{owner}: {flag}=True but custom_layers {types} has no 'c' (cross-attention) "
            f"layer, so the context would never be read; add 'c' or drop {flag}"
        )
    if config.only_cross and "a" in types:
        raise ValueError(
            f"{owner}: only_cross=True but custom_layers {types} has an 'a' "
            "(self-attention) layer; drop only_cross (a 'c' layer cross-attends by itself)"
        )


def _refuse_self_attention_flags(config: LayersConfig, types: tuple[str, ...], owner: str):
    """Flags that act only on self-attention, in a stack that has none."""
    positional = {
        "rotary_pos_emb": "rotates self-attention queries/keys",
        "rotary_xpos": "rotates and scales self-attention queries/keys",
        "rel_pos_bias": "biases self-attention scores by distance",
        "alibi_pos_bias": "biases self-attention scores by distance",
        "dynamic_pos_bias": "biases self-attention scores by distance",
        "shaw_rel_pos": "adds relative embeddings to self-attention keys/values",
        "position_infused_attn": "adds positions to self-attention queries/keys",
    }
    other = {
        "residual_attn": "chains self-attention logits (use cross_residual_attn)",
        "causal": "masks the future in self-attention",
    }
    custom = config.custom_layers is not None
    for flag, what in {**positional, **other}.items():
        if not getattr(config, flag):
            continue
        why = "so it would have no effect"
        if flag in positional:
            why += " (and a wrapper would drop its absolute positions: a position-blind model)"
        fix = f"drop {flag}" + (" or add 'a' to custom_layers" if custom else "")
        if flag == "causal" and custom:
            fix = "add 'a' to custom_layers (a Decoder is always causal) or use an Encoder"
        elif flag == "causal":
            fix += " (a Decoder is always causal: use CrossAttender for cross-attention only)"
        raise ValueError(
            f"{owner}: {flag}=True {what}, but {describe_plan(types, custom)} no "
            f"self-attention layer, {why}; {fix}"
        )


def _validate_residual_rules(config: LayersConfig, owner: str, explicit: set[str]) -> None:
    if config.use_rezero and config.gate_residual:
        raise ValueError(
            f"{owner}: use_rezero and gate_residual are two residual rules; choose one"
        )
    if config.use_rezero and config.norm != "layernorm":
        raise ValueError(
            f"{owner}: use_rezero removes normalisation, so use_{config.norm} "
            "would have no effect; choose one"
        )
    if config.use_rezero and "pre_norm" in explicit:
        raise ValueError(
            f"{owner}: use_rezero has no normalisation, so pre_norm has no effect; drop pre_norm"
        )


def _validate_reversible(config: LayersConfig, owner: str) -> None:
    refused = {
        "residual_attn": config.residual_attn,
        "gate_residual": config.gate_residual,
        "use_rezero": config.use_rezero,
        "macaron": config.macaron,
        "sandwich_coef": config.sandwich_coef is not None,
        "custom_layers": config.custom_layers is not None,
        "cross_attend": config.cross_attend or config.only_cross,
        "pre_norm=False": not config.pre_norm,
        **reversible_refusals(config),
        "add_value_residual": config.add_value_residual,
    }
    bad = [name for name, on in refused.items() if on]
    if bad:
        raise ValueError(
            f"{owner}: reversible=True pairs each self-attention with one feed-forward "
            f"(y1 = x1 + Attn(x2), y2 = x2 + FF(y1)) under pre-norm; it cannot be combined "
            f"with {', '.join(bad)}"
        )
