"""Per-layer values, spelled explicitly: ``attn_window_size=per_layer((256, 256, 256, None))``.

A stack's ``attn_*`` / ``cross_attn_*`` / ``ff_*`` flags apply to every layer of their kind.
:func:`per_layer` gives one value per layer of that kind instead (in stack order), so a stack
may mix, for example, sliding-window and full layers. It is the explicit spelling of
x-transformers' plain tuples (:mod:`x_attn.layer_values`), which x_attn also accepts; unlike a
plain tuple it is never mistaken for an option's own tuple value (such options refuse it).
A per-layer ``attn_*`` value is not inherited by cross-attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# options that must be the same in every layer of a stack, with the reason
UNIFORM = {
    "dim_head": "the stack's positional tables (rotary) are built once for one head dim",
}
UNIFORM_PREFIXES = {"mta": "choose Multi-Token Attention layers with attn_mta_layers"}


@dataclass(frozen=True)
class PerLayer:
    """One value per layer of a kind, in stack order (see :func:`per_layer`)."""

    values: tuple[Any, ...]

    def __repr__(self) -> str:
        return f"per_layer({self.values!r})"


def per_layer(values: Sequence[Any]) -> PerLayer:
    """Mark ``values`` (a tuple or list) as one value per layer of the flag's kind.

    Example: ``Decoder(dim=256, depth=4, attn_window_size=per_layer((64, 64, 64, None)))``
    gives three window layers and a full one.
    """
    if isinstance(values, PerLayer):
        return values
    if not isinstance(values, (tuple, list)) or not values:
        raise TypeError(
            f"per_layer: pass a non-empty tuple or list with one value per layer of the "
            f"flag's kind, got {type(values).__name__} {values!r}"
        )
    return PerLayer(tuple(values))


def refuse_uniform(owner: str, flag: str, name: str) -> None:
    """ValueError when option ``name`` (given as ``flag``) may not differ between layers."""
    reason = UNIFORM.get(name)
    if reason is None:
        reason = next((r for p, r in UNIFORM_PREFIXES.items() if name.startswith(p)), None)
    if reason is not None:
        raise ValueError(f"{owner}: {flag} cannot take per_layer(...) values: {reason}")


def unwrap(owner: str, key: str, name: str, marker: PerLayer, tuple_typed: bool) -> tuple:
    """The values of ``key=per_layer(...)`` as the per-layer tuple the router splits
    (:mod:`x_attn.layer_values` checks their count and each layer's config)."""
    if tuple_typed:
        raise ValueError(
            f"{owner}: {key} takes a tuple as its own value, so per_layer(...) cannot give one "
            "per layer; give the stack one value"
        )
    refuse_uniform(owner, key, name)
    return tuple(tuple(v) if isinstance(v, list) else v for v in marker.values)
