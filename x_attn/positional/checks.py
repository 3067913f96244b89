"""Construction-time checks of a stack's positional flags.

A positional option without the scheme it configures, two schemes that fill the same role, or a
scheme that cannot work in the stack is refused with a ValueError naming both flags. The value
checks of each scheme's own numbers live with the scheme (rotary_scaling.py, alibi.py, ...).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, fields
from typing import Any

from x_attn.config import LayersConfig

_DEFAULTS = {f.name: f.default for f in fields(LayersConfig) if f.default is not MISSING}

# option -> the flag that turns its scheme on
_OPTIONS = {
    "rotary_emb_dim": "rotary_pos_emb",
    "rotary_base": "rotary_pos_emb",
    "rotary_interpolation_factor": "rotary_pos_emb",
    "rotary_base_rescale_factor": "rotary_pos_emb",
    "rotary_interleaved": "rotary_pos_emb",
    "rotary_xpos_scale_base": "rotary_xpos",
    "rotary_yarn_factor": "rotary_pos_emb",
    "rotary_yarn_original_max_len": "rotary_yarn_factor",
    "rotary_yarn_beta_fast": "rotary_yarn_factor",
    "rotary_yarn_beta_slow": "rotary_yarn_factor",
    "rotary_yarn_attn_factor": "rotary_yarn_factor",
    "rotary_llama3_factor": "rotary_pos_emb",
    "rotary_llama3_original_max_len": "rotary_llama3_factor",
    "rotary_llama3_low_freq_factor": "rotary_llama3_factor",
    "rotary_llama3_high_freq_factor": "rotary_llama3_factor",
    "dynamic_pos_bias_log_distance": "dynamic_pos_bias",
    "dynamic_pos_bias_mlp_depth": "dynamic_pos_bias",
    "dynamic_pos_bias_norm": "dynamic_pos_bias",
    "shaw_max_distance": "shaw_rel_pos",
    "shaw_rel_values": "shaw_rel_pos",
}


def uses_rotary(config: LayersConfig) -> bool:
    """Rotary embeddings are on (``rotary_xpos`` implies them, as in x-transformers)."""
    return config.rotary_pos_emb or config.rotary_xpos


def _changed(config: LayersConfig, name: str) -> bool:
    return getattr(config, name) != _DEFAULTS[name]


def _scheme_on(config: LayersConfig, flag: str) -> bool:
    return uses_rotary(config) if flag == "rotary_pos_emb" else bool(getattr(config, flag))


def validate_positional(config: LayersConfig, owner: str) -> None:
    """Refuse positional flag combinations that cannot work (construction time)."""
    for option, scheme in _OPTIONS.items():
        if _changed(config, option) and not _scheme_on(config, scheme):
            raise ValueError(
                f"{owner}: {option}={getattr(config, option)!r} configures {scheme}, but "
                f"{scheme} is {getattr(config, scheme)!r}, so it would have no effect; set "
                f"{scheme} or drop {option}"
            )
    _validate_rotary(config, owner)
    _validate_polar(config, owner)
    _one_bias(config, owner)
    if config.alibi_num_heads is not None and not 1 <= config.alibi_num_heads <= config.heads:
        raise ValueError(
            f"{owner}: alibi_num_heads must be between 1 and heads={config.heads}, "
            f"got {config.alibi_num_heads}"
        )
    _validate_rel_pos_kwargs(config, owner)
    if config.dynamic_pos_bias:
        if config.dynamic_pos_bias_mlp_depth < 1:
            raise ValueError(
                f"{owner}: dynamic_pos_bias_mlp_depth must be >= 1, got "
                f"{config.dynamic_pos_bias_mlp_depth}"
            )
        if config.dim < 4:
            raise ValueError(
                f"{owner}: dynamic_pos_bias uses an MLP of width dim // 4, which needs dim >= 4, "
                f"got dim={config.dim}"
            )
    if config.shaw_rel_pos and config.shaw_max_distance < 0:
        raise ValueError(
            f"{owner}: shaw_max_distance (the clipping distance k) must be >= 0, got "
            f"{config.shaw_max_distance}"
        )


def _validate_polar(config: LayersConfig, owner: str) -> None:
    """PoPE (polar_pos_emb) replaces rotary and has no relative keys of head width."""
    if not config.polar_pos_emb:
        return
    for other, why in (
        ("rotary_pos_emb", "both give queries and keys their phases by position"),
        ("rotary_xpos", "both give queries and keys their phases by position"),
        ("shaw_rel_pos", "Shaw's relative keys are as wide as the head, which PoPE doubles"),
    ):
        if getattr(config, other):
            raise ValueError(f"{owner}: polar_pos_emb and {other}: {why}; choose one")


def _validate_rotary(config: LayersConfig, owner: str) -> None:
    r = config.rotary_emb_dim
    if r is not None and (r < 2 or r % 2):
        raise ValueError(f"{owner}: rotary_emb_dim must be an even number >= 2, got {r}")
    if config.rotary_interpolation_factor < 1:
        raise ValueError(f"{owner}: rotary_interpolation_factor must be >= 1")
    if config.rotary_xpos and not config.causal:
        raise ValueError(
            f"{owner}: rotary_xpos=True decays scores with the distance to past keys and grows "
            "them for future keys, so it needs causal=True (a Decoder); drop rotary_xpos or use "
            "causal attention"
        )
    rescalers = [
        name
        for name in (
            "rotary_interpolation_factor",
            "rotary_base_rescale_factor",
            "rotary_yarn_factor",
            "rotary_llama3_factor",
        )
        if _changed(config, name)
    ]
    legacy = {"rotary_interpolation_factor", "rotary_base_rescale_factor"}
    if len(rescalers) > 1 and not set(rescalers) <= legacy:  # PI + NTK compose (x-transformers)
        raise ValueError(
            f"{owner}: {rescalers[0]} and {rescalers[1]} both rescale the rotary frequencies "
            "for longer contexts; choose one"
        )


def _one_bias(config: LayersConfig, owner: str) -> None:
    on = [n for n in ("rel_pos_bias", "alibi_pos_bias", "dynamic_pos_bias") if getattr(config, n)]
    if len(on) > 1:
        raise ValueError(
            f"{owner}: {on[0]} and {on[1]} are two additive position biases shared by the "
            "stack; choose one"
        )


def _validate_rel_pos_kwargs(config: LayersConfig, owner: str) -> None:
    kwargs: Any = config.rel_pos_kwargs
    if not isinstance(kwargs, dict):
        raise TypeError(
            f"{owner}: rel_pos_kwargs must be a dict, got {type(kwargs).__name__} {kwargs!r}"
        )
    if not kwargs:
        return
    if not config.alibi_pos_bias:
        scheme = next((n for n in ("rel_pos_bias", "dynamic_pos_bias") if getattr(config, n)), None)
        why = f"{scheme} takes no extra options" if scheme else "no position bias is on"
        raise ValueError(
            f"{owner}: rel_pos_kwargs={kwargs!r} but {why}; rel_pos_kwargs accepts 'slopes' "
            "for alibi_pos_bias=True"
        )
    unknown = sorted(set(kwargs) - {"slopes"})
    if unknown:
        raise TypeError(
            f"{owner}: rel_pos_kwargs has unknown key(s) {unknown} for alibi_pos_bias; the only "
            "option is 'slopes' (one per ALiBi head)"
        )
    check_slopes(kwargs["slopes"], config.alibi_num_heads or config.heads, owner)


def check_slopes(slopes: Any, heads: int, owner: str) -> None:
    """Custom ALiBi slopes: a list of ``heads`` finite numbers."""
    if not isinstance(slopes, (list, tuple)) or not all(
        isinstance(s, (int, float)) and not isinstance(s, bool) for s in slopes
    ):
        raise TypeError(
            f"{owner}: rel_pos_kwargs['slopes'] must be a list of numbers (one per ALiBi head), "
            f"got {slopes!r}"
        )
    if len(slopes) != heads or not all(math.isfinite(s) for s in slopes):
        raise ValueError(
            f"{owner}: rel_pos_kwargs['slopes'] must hold {heads} finite numbers (one per ALiBi "
            f"head: alibi_num_heads or heads), got {len(slopes)}: {list(slopes)!r}"
        )
