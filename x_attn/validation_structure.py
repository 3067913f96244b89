"""Checks of the stack's residual / norm structure, conditioning and layer-plan flags.

Called from :func:`x_attn.validation.validate_layers`; each check names the flags and the fix.
A flag x-transformers' own examples pass where it has no effect (``dim_condition`` without an
adaptive norm) gets a warning instead of an error, so that their code runs unchanged.
"""

from __future__ import annotations

import warnings
from typing import Any

from x_attn.config import LayersConfig
from x_attn.layers.mv_split import check_kwargs as check_mv_split_kwargs
from x_attn.layers.norms import EPS_NORM_KINDS
from x_attn.layers.plan import make_plan, per_module
from x_attn.layers.shift import shift_amounts
from x_attn.utils import check_positive_int, check_probability, refuse_several

ADAPTIVE_NORMS = ("adaptive_layernorm", "adaptive_rmsnorm")


def _number(name: str, value: Any, owner: str, low: float = 0.0, high: float | None = None):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: '{name}' must be a number, got {type(value).__name__}")
    if not value > low or (high is not None and value > high):
        bound = f"in ({low}, {high}]" if high is not None else f"> {low}"
        raise ValueError(f"{owner}: '{name}' must be {bound}, got {value}")


def _refuse_without(config, owner, explicit, pairs) -> None:
    """Refuse a value flag passed without the flag that reads it (it would do nothing)."""
    for flag, needs, on in pairs:
        if flag in explicit and not on:
            raise ValueError(f"{owner}: '{flag}' is read only with {needs}; set it or drop {flag}")


def validate_structure(config: LayersConfig, owner: str, explicit: set[str]) -> None:
    """Every check of this module, in order."""
    _validate_plan(config, owner)
    _validate_norms(config, owner, explicit)
    _validate_resi_dual(config, owner, explicit)
    _validate_scales(config, owner, explicit)
    _validate_conditioning(config, owner, explicit)
    _validate_update_rules(config, owner, explicit)


def _validate_plan(config: LayersConfig, owner: str) -> None:
    custom = config.custom_layers is not None
    if config.depth is None and not custom:
        raise ValueError(
            f"{owner}: 'depth' is needed unless custom_layers gives the layers; pass depth=..."
        )
    if config.depth is not None:
        check_positive_int("depth", config.depth, owner)
    if config.weight_tie_layers:
        bad = [n for n in ("custom_layers", "sandwich_coef", "layers_execute_order")]
        bad = [n for n in bad if getattr(config, n) is not None]
        if bad:
            raise ValueError(
                f"{owner}: weight_tie_layers runs one default block depth times; it cannot "
                f"be combined with {', '.join(bad)}"
            )
    plan = make_plan(config, owner)
    n = len(plan.types)
    for p in per_module(config.layer_dropout, n, "layer_dropout", owner):
        check_probability("layer_dropout", p, owner)
    for c in per_module(config.checkpoint_layers, n, "checkpoint_layers", owner):
        if not isinstance(c, bool):
            raise TypeError(
                f"{owner}: 'checkpoint_layers' takes True/False or one bool per layer (here "
                f"{n}), got {type(c).__name__} {c!r}"
            )
    d = config.dim
    for s in per_module(config.shift_tokens, n, "shift_tokens", owner):
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"{owner}: 'shift_tokens' values must be ints >= 0, got {s!r}")
        chunks = len(shift_amounts(s, config.causal))
        if s and d < chunks:
            raise ValueError(
                f"{owner}: shift_tokens={s} splits dim={d} into {chunks} chunks (one per "
                "shift); lower shift_tokens or raise dim"
            )


def _validate_norm_eps(config: LayersConfig, owner: str) -> None:
    """``norm_eps``: a number > 0, for a norm kind that has an eps."""
    eps = config.norm_eps
    if eps is None:
        return
    _number("norm_eps", eps, owner)
    if config.norm not in EPS_NORM_KINDS or config.use_rezero:
        chosen = "use_rezero (no norms)" if config.use_rezero else f"the {config.norm} norm"
        raise ValueError(
            f"{owner}: 'norm_eps' sets the eps of {', '.join(EPS_NORM_KINDS)}; {chosen} has none; "
            "drop norm_eps"
        )


def _validate_norms(config: LayersConfig, owner: str, explicit: set[str]) -> None:
    _validate_norm_eps(config, owner)
    if config.norm == "dynamic_tanh" and not config.pre_norm:
        raise ValueError(f"{owner}: use_dynamic_tanh replaces pre-norms; it needs pre_norm=True")
    _refuse_without(
        config,
        owner,
        explicit,
        [("dynamic_tanh_init_alpha", "use_dynamic_tanh=True", config.norm == "dynamic_tanh")],
    )
    if config.sandwich_norm and (not config.pre_norm or config.use_rezero):
        raise ValueError(
            f"{owner}: sandwich_norm adds a norm after each pre-normed branch; it needs "
            "pre_norm=True and normalisation (not use_rezero)"
        )
    if config.pre_and_post_norm and ("pre_norm" in explicit and not config.pre_norm):
        raise ValueError(f"{owner}: pre_and_post_norm is pre-norm plus post-norm; drop pre_norm")
    if config.pre_and_post_norm and config.use_rezero:
        raise ValueError(f"{owner}: pre_and_post_norm and use_rezero (no norms); choose one")
    has_final = config.pre_norm and not config.use_rezero and not config.pre_and_post_norm
    if "pre_norm_has_final_norm" in explicit and not (has_final and not config.resi_dual):
        raise ValueError(
            f"{owner}: pre_norm_has_final_norm applies to a pre-norm stack only (not "
            "pre_norm=False, use_rezero, pre_and_post_norm or resi_dual); drop it"
        )


def _validate_resi_dual(config: LayersConfig, owner: str, explicit: set[str]) -> None:
    if not config.resi_dual:
        _refuse_without(config, owner, explicit, [("resi_dual_scale", "resi_dual=True", False)])
        return
    _number("resi_dual_scale", config.resi_dual_scale, owner, 0.0, 1.0)
    bad = [
        name
        for name, on in (
            ("pre_norm=True", "pre_norm" in explicit and config.pre_norm),
            ("use_rezero", config.use_rezero),
            ("sandwich_norm", config.sandwich_norm),
            ("pre_and_post_norm", config.pre_and_post_norm),
            ("softclamp_output", config.softclamp_output),
            ("use_dynamic_tanh", config.norm == "dynamic_tanh"),
        )
        if on
    ]
    if bad:
        raise ValueError(
            f"{owner}: resi_dual keeps a post-norm stream and a pre-norm stream summed as "
            f"x + LN(dual) at the end; it cannot be combined with {', '.join(bad)}"
        )


def _validate_scales(config: LayersConfig, owner: str, explicit: set[str]) -> None:
    if config.use_layerscale and config.use_adaptive_layerscale:
        raise ValueError(
            f"{owner}: use_layerscale and use_adaptive_layerscale both scale the branch "
            "outputs; choose one"
        )
    if not isinstance(config.layerscale_init_value, (int, float)) or isinstance(
        config.layerscale_init_value, bool
    ):
        raise TypeError(f"{owner}: 'layerscale_init_value' must be a number")
    if not isinstance(config.scale_residual, bool):
        _number("scale_residual", config.scale_residual, owner)
    _number("scale_residual_constant", config.scale_residual_constant, owner)
    _number("softclamp_output_value", config.softclamp_output_value, owner)
    _refuse_without(
        config,
        owner,
        explicit,
        [
            ("layerscale_init_value", "use_layerscale=True", config.use_layerscale),
            ("softclamp_output_value", "softclamp_output=True", config.softclamp_output),
        ],
    )


def _validate_conditioning(config: LayersConfig, owner: str, explicit: set[str]) -> None:
    needs = config.norm in ADAPTIVE_NORMS or config.use_adaptive_layerscale
    if config.dim_condition is not None:
        check_positive_int("dim_condition", config.dim_condition, owner)
    check_positive_int(
        "adaptive_condition_mlp_expansion", config.adaptive_condition_mlp_expansion, owner
    )
    if needs:
        return
    _refuse_without(
        config,
        owner,
        explicit,
        [
            (name, "an adaptive norm or use_adaptive_layerscale", False)
            for name in ("adaptive_condition_mlp", "adaptive_condition_mlp_expansion")
        ],
    )
    if config.dim_condition is not None:
        warnings.warn(
            f"{owner}: dim_condition has no effect without use_adaptive_layernorm, "
            "use_adaptive_rmsnorm or use_adaptive_layerscale (x-transformers ignores it too)",
            stacklevel=5,
        )


def _validate_update_rules(config: LayersConfig, owner: str, explicit: set[str]) -> None:
    """orthog_residual / mv_split_residual replace the residual rule: one rule per stack."""
    rules = (
        ("orthog_residual", config.orthog_residual),
        ("mv_split_residual", config.mv_split_residual),
        ("gate_residual", config.gate_residual),
        ("use_rezero", config.use_rezero),
    )
    reason = "are different residual rules (how a branch joins the stream)"
    refuse_several(owner, rules, reason)
    _refuse_without(
        config,
        owner,
        explicit,
        [
            (
                "residual_fn_kwargs",
                "mv_split_residual=True",
                config.mv_split_residual or not config.residual_fn_kwargs,
            )
        ],
    )
    if config.mv_split_residual:
        check_mv_split_kwargs(config.residual_fn_kwargs, owner)
    _refuse_without(
        config,
        owner,
        explicit,
        [
            (
                "learned_reinject_input_gate",
                "reinject_input=True",
                config.reinject_input or not config.learned_reinject_input_gate,
            )
        ],
    )


def _any_nonzero(value: Any) -> bool:
    return any(value) if isinstance(value, (tuple, list)) else bool(value)


def reversible_refusals(config: LayersConfig) -> dict[str, bool]:
    """The flags of this module that the reversible stack cannot run, and whether each is on."""
    return {
        "layer_dropout": _any_nonzero(config.layer_dropout),
        "checkpoint_layers (the reversible stack already recomputes)": _any_nonzero(
            config.checkpoint_layers
        ),
        "shift_tokens": _any_nonzero(config.shift_tokens),
        "weight_tie_layers": config.weight_tie_layers,
        "layers_execute_order": config.layers_execute_order is not None,
        "resi_dual": config.resi_dual,
        "pre_and_post_norm": config.pre_and_post_norm,
        "orthog_residual": config.orthog_residual,
        "mv_split_residual": config.mv_split_residual,
        "reinject_input": config.reinject_input,
        "scale_residual": bool(config.scale_residual),
        "scale_residual_constant": config.scale_residual_constant != 1,
        "adaptive norms / layerscale (condition)": config.norm in ADAPTIVE_NORMS
        or config.use_adaptive_layerscale,
    }
