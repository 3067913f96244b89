"""Per-layer values of attention flags: ``attn_window_size=per_layer((256, 256, 256, None))``.

A stack's ``attn_*`` flags apply to every attention layer. Wrapping a value in
:func:`per_layer` gives one value per self-attention layer instead (in stack order), so a stack
may mix, for example, sliding-window and full layers. Per-layer values are always explicit:
a plain tuple is never read as "one value per layer" (DESIGN.md section 4).

Cross-attention layers keep the flag's default (set ``cross_attn_<name>`` for them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from x_attn.validation import check_field_types

# options that must be the same in every layer of a stack, with the reason
UNIFORM = {
    "dim_head": "the stack's positional tables (rotary) are built once for one head dim",
}
UNIFORM_PREFIXES = {"mta": "choose Multi-Token Attention layers with attn_mta_layers"}


@dataclass(frozen=True)
class PerLayer:
    """One value per self-attention layer of a stack, in order (see :func:`per_layer`)."""

    values: tuple[Any, ...]

    def __repr__(self) -> str:
        return f"per_layer({self.values!r})"


def per_layer(values: Sequence[Any]) -> PerLayer:
    """Mark ``values`` (a tuple or list) as one value per self-attention layer.

    Example: ``Decoder(dim=256, depth=4, attn_window_size=per_layer((64, 64, 64, None)))``
    gives three window layers and a full one.
    """
    if isinstance(values, PerLayer):
        return values
    if not isinstance(values, (tuple, list)) or not values:
        raise TypeError(
            f"per_layer: pass a non-empty tuple or list with one value per self-attention "
            f"layer, got {type(values).__name__} {values!r}"
        )
    return PerLayer(tuple(values))


def refuse_uniform(owner: str, flag: str, name: str) -> None:
    """ValueError when option ``name`` (given as ``flag``) may not differ between layers."""
    reason = UNIFORM.get(name)
    if reason is None:
        reason = next((r for p, r in UNIFORM_PREFIXES.items() if name.startswith(p)), None)
    if reason is not None:
        raise ValueError(f"{owner}: {flag} cannot take per_layer(...) values: {reason}")


def check_target(owner: str, key: str, bucket: str, name: str) -> None:
    """per_layer(...) is accepted for ``attn_*`` options only (self-attention layers)."""
    if bucket != "attn" or not key.startswith("attn_"):
        raise ValueError(
            f"{owner}: {key}=per_layer(...): per-layer values are accepted for attn_* flags "
            "(one value per self-attention layer); give this flag one value for the stack"
        )
    refuse_uniform(owner, key, name)


def layer_configs(owner: str, base: Any, count: int, values: dict[str, PerLayer]) -> tuple:
    """One AttentionConfig per self-attention layer: ``base`` with the per-layer values.

    Each config is type-checked and validated with the layer named in messages.
    """
    for name, marker in values.items():
        if len(marker.values) != count:
            raise ValueError(
                f"{owner}: attn_{name}={marker!r} has {len(marker.values)} values, but the stack "
                f"has {count} self-attention layers; give one value per self-attention layer"
            )
    configs = []
    for index in range(count):
        chosen = {name: _plain(marker.values[index]) for name, marker in values.items()}
        config = replace(base, **chosen)
        where = f"{owner} (self-attention layer {index})"
        check_field_types(config, where, "attn_")
        config.validate(where, "attn_")
        configs.append(config)
    return tuple(configs)


def _plain(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
