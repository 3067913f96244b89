"""Which layer modules a stack builds and in which order it runs them (pure Python, no torch).

x-transformers' conventions:

- ``layer_types``: the letters of the modules built (see :mod:`x_attn.layers.pattern`).
- ``layers_execute_order``: indices into ``layer_types``, in the order they run; a module may
  run several times (its weights are then shared by those runs). Default: each once, in order.
- ``weight_tie_layers=True``: one block of modules (``('a', 'f')``...), run ``depth`` times
  (Dehghani et al., "Universal Transformers", arXiv 1807.03819; Lan et al., ALBERT,
  arXiv 1909.11942).
- ``depth=None`` with ``custom_layers``: the depth is the number of layers run.
- ``repeat_blocks`` (forward): blocks ``start..end`` (of the default block) run ``repeats``
  times, e.g. ``((2, 2), (5, 2))`` on six blocks runs 0 1 2 2 3 4 5 5.
- per-layer values: ``layer_dropout`` and ``shift_tokens`` may be one value or one per module;
  :func:`layer_schedule` makes such tuples (``ff_mult=layer_schedule(6, 2, depth=12)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from x_attn.config import LayersConfig
from x_attn.layers.pattern import layer_types


def layer_schedule(
    start: float, end: float, depth: int, schedule: str | Callable = "cosine"
) -> tuple[float, ...]:
    """One value per layer, from ``start`` (first layer) to ``end`` (last layer).

    Args:
        start: the first layer's value.
        end: the last layer's value.
        depth: the number of values (> 1).
        schedule: ``"linear"``, ``"cosine"`` (half a cosine, flat at both ends) or a function
            ``(start, end, t) -> value`` of ``t = layer / (depth - 1)`` in [0, 1].
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2:
        raise ValueError(f"layer_schedule: 'depth' must be an int > 1, got {depth!r}")
    if schedule == "linear":
        schedule = _linear
    elif schedule == "cosine":
        schedule = _cosine
    elif not callable(schedule):
        raise ValueError(
            f"layer_schedule: 'schedule' must be 'linear', 'cosine' or a function "
            f"(start, end, t) -> value, got {schedule!r}"
        )
    return tuple(schedule(start, end, i / (depth - 1)) for i in range(depth))


def _linear(start: float, end: float, t: float) -> float:
    return start + (end - start) * t


def _cosine(start: float, end: float, t: float) -> float:
    return start + (end - start) * 0.5 * (1 - math.cos(math.pi * t))


@dataclass(frozen=True)
class LayerPlan:
    """The modules of a stack and the order they run in.

    Attributes:
        types: letter of each module built.
        order: module index of each run.
        block_len: modules per default block (1 for custom layers / sandwich).
    """

    types: tuple[str, ...]
    order: tuple[int, ...]
    block_len: int

    @property
    def run_types(self) -> tuple[str, ...]:
        """The letter of each run, in order."""
        return tuple(self.types[i] for i in self.order)

    def repeat(self, repeat_blocks: Any, owner: str) -> tuple[int, ...]:
        """The run order ``repeat_blocks`` asks for (see the module docstring)."""
        if self.block_len == 1 and len(self.types) > 1:
            raise ValueError(
                f"{owner}: repeat_blocks repeats default blocks; this stack's layers come from "
                "custom_layers / sandwich_coef, so pass layers_execute_order instead"
            )
        specs = repeat_blocks
        if isinstance(specs, tuple) and len(specs) == 2 and isinstance(specs[1], int):
            specs = (specs,)
        num_blocks = len(self.types) // self.block_len
        starts = dict(_repeat_spec(spec, num_blocks, owner) for spec in specs)
        blocks, block = [], 0
        while block < num_blocks:
            end, repeats = starts.get(block, (block, 1))
            blocks += list(range(block, end + 1)) * repeats
            block = end + 1
        return tuple(b * self.block_len + i for b in blocks for i in range(self.block_len))

    def check_order(self, order: Any, name: str, owner: str) -> tuple[int, ...]:
        """``order`` as a tuple of module indices, or a ValueError naming ``name``."""
        n = len(self.types)
        if not isinstance(order, (tuple, list)) or not order:
            raise ValueError(f"{owner}: '{name}' must be a non-empty tuple of layer indices")
        for i in order:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
                raise ValueError(
                    f"{owner}: '{name}' holds {i!r}; every entry must be a layer index in "
                    f"[0, {n}) (the stack has {n} layers: {''.join(self.types)})"
                )
        return tuple(order)


def _repeat_spec(spec: Any, num_blocks: int, owner: str) -> tuple[int, tuple[int, int]]:
    ok = isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[1], int)
    if ok:
        span, repeats = spec
        start, end = (span, span) if isinstance(span, int) else tuple(span)
        ok = 0 <= start <= end < num_blocks and repeats >= 1
    if not ok:
        raise ValueError(
            f"{owner}: repeat_blocks entries are (block, repeats) or ((start, end), repeats) "
            f"with 0 <= start <= end < {num_blocks} blocks and repeats >= 1, got {spec!r}"
        )
    return start, (end, repeats)


def make_plan(cfg: LayersConfig, owner: str) -> LayerPlan:
    """The modules and run order ``cfg`` describes (flags checked in x_attn.validation)."""
    default = layer_types(
        1,
        cross_attend=cfg.cross_attend,
        only_cross=cfg.only_cross,
        macaron=cfg.macaron,
    )
    if cfg.weight_tie_layers:
        return LayerPlan(default, tuple(range(len(default))) * cfg.depth, len(default))
    custom = cfg.custom_layers is not None or cfg.sandwich_coef is not None
    types = stack_types(cfg)
    plan = LayerPlan(types, tuple(range(len(types))), 1 if custom else len(default))
    if cfg.layers_execute_order is not None:
        order = plan.check_order(cfg.layers_execute_order, "layers_execute_order", owner)
        unused = sorted(set(range(len(types))) - set(order))
        if unused:
            raise ValueError(
                f"{owner}: layers_execute_order {order} never runs layers {unused} of "
                f"{''.join(types)}, whose weights would never train; run every layer, or "
                "build only those you run (custom_layers)"
            )
        plan = LayerPlan(types, order, plan.block_len)
    return plan


def stack_types(cfg: LayersConfig) -> tuple[str, ...]:
    """The letters of the modules built (``depth`` may be None with ``custom_layers``)."""
    return layer_types(
        cfg.depth if cfg.depth is not None else 1,
        cross_attend=cfg.cross_attend,
        only_cross=cfg.only_cross,
        macaron=cfg.macaron,
        sandwich_coef=cfg.sandwich_coef,
        custom_layers=cfg.custom_layers,
    )


def per_module(value: Any, n: int, name: str, owner: str) -> tuple[Any, ...]:
    """One value per module: ``value`` repeated, or a tuple of exactly ``n`` values."""
    if not isinstance(value, (tuple, list)):
        return (value,) * n
    if len(value) != n:
        raise ValueError(
            f"{owner}: '{name}' has {len(value)} values, but the stack builds {n} layers; "
            "give one value or one per layer"
        )
    return tuple(value)


def count(types: Sequence[str], kind: str) -> int:
    """How many modules of ``kind`` there are."""
    return sum(t == kind for t in types)
