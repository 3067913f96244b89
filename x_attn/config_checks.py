"""Refused combinations of the attention flags added for x-transformers compatibility
(QK-norm family, soft-capping, null keys, value gates).

A sub-option without its feature would be silently ignored, so it is refused naming both
flags; so are two flags that x-transformers also refuses together.
"""

from __future__ import annotations

from typing import Any

from x_attn.utils import check_positive_int

# sub-option -> (its default, the feature flag it belongs to)
_SUB_OPTIONS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "qk_norm_groups": (1, ("qk_norm",)),
    "qk_norm_scale": (10.0, ("qk_norm",)),
    "qk_norm_dim_scale": (False, ("qk_norm",)),
    "logit_softclamp_value": (50.0, ("softclamp_logits",)),
    "gate_values_rank": (None, ("gate_values",)),
    "gate_values_headwise": (False, ("gate_values",)),
    "output_gate_rank": (None, ("output_gate",)),
    "output_gate_headwise": (False, ("output_gate",)),
    "swiglu_values": (False, ("gate_values", "output_gate")),
    "low_rank_silu_gates": (True, ("gate_values_rank", "output_gate_rank")),
    "cope_max_pos": (16, ("use_cope",)),
}


def validate_attention_extras(config: Any, owner: str, prefix: str) -> None:
    """ValueError naming the flags for a combination of these options that cannot work."""
    for name, (default, owners) in _SUB_OPTIONS.items():
        value = getattr(config, name)
        if value != default and not any(getattr(config, o) not in (None, False) for o in owners):
            needs = " or ".join(f"'{prefix}{o}'" for o in owners)
            raise ValueError(
                f"{owner}: '{prefix}{name}={value!r}' has no effect without {needs}; set "
                f"{needs.replace(' or ', ' / ')} or drop '{prefix}{name}'"
            )
    check_positive_int(f"{prefix}qk_norm_groups", config.qk_norm_groups, owner)
    check_positive_int(f"{prefix}cope_max_pos", config.cope_max_pos, owner)
    if config.qk_norm and config.dim_head % config.qk_norm_groups:
        raise ValueError(
            f"{owner}: '{prefix}qk_norm_groups={config.qk_norm_groups}' must divide "
            f"'{prefix}dim_head={config.dim_head}' (each group of a head is normalized)"
        )
    for name in ("qk_norm_scale", "logit_softclamp_value"):
        if not getattr(config, name) > 0:
            raise ValueError(f"{owner}: '{prefix}{name}' must be > 0, got {getattr(config, name)}")
    if config.qk_norm_dim_scale and config.qk_norm_scale != 10.0:
        raise ValueError(
            f"{owner}: '{prefix}qk_norm_dim_scale' learns the scale per dimension and uses "
            f"dim_head ** -0.5 as the logit scale, so '{prefix}qk_norm_scale' has no effect; "
            "drop one"
        )
    if config.qk_rmsnorm and config.k_rmsnorm:
        raise ValueError(
            f"{owner}: '{prefix}qk_rmsnorm' already normalizes the keys; drop "
            f"'{prefix}k_rmsnorm' (or use it alone for keys only)"
        )
    for gate in ("gate_values", "output_gate"):
        rank = getattr(config, f"{gate}_rank")
        if rank is not None:
            check_positive_int(f"{prefix}{gate}_rank", rank, owner)
        if rank is not None and getattr(config, f"{gate}_headwise"):
            raise ValueError(
                f"{owner}: '{prefix}{gate}_headwise' projects straight to one gate per head, "
                f"so '{prefix}{gate}_rank' has no effect; choose one"
            )
