"""Flat x-transformers style keyword arguments -> typed configs.

Routing is by longest prefix: ``cross_attn_*`` -> cross attention only, ``attn_*`` -> self and
cross attention, ``ff_*`` -> feed-forward, anything else -> the stack. Old boolean spellings of
exclusive choices (``use_rmsnorm=True``) map to one field (``norm="rmsnorm"``). An
x-transformers flag that x_attn lacks is dropped at its off value and refused otherwise
(:mod:`x_attn.compat`); any other unknown name raises TypeError with the closest known name.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from x_attn.compat import is_unsupported_noop
from x_attn.config import AttentionConfig, FeedForwardConfig, LayersConfig
from x_attn.config_sparse import check_sparse_used
from x_attn.layer_values import split_layer_values, tuple_typed, with_layer_values
from x_attn.per_layer import PerLayer, unwrap
from x_attn.validation import check_field_types, check_value_type, validate_layers

ATTN_FIELDS = {f.name for f in fields(AttentionConfig)}
FF_FIELDS = {f.name for f in fields(FeedForwardConfig) if f.init}
LAYER_FIELDS = {f.name for f in fields(LayersConfig)} - {
    "attn",
    "cross_attn",
    "ff",
    "norm",
    "layer_values",
}

# boolean flag -> (config field, value it selects)
CHOICE_ALIASES: dict[str, tuple[str, str]] = {
    "use_rmsnorm": ("norm", "rmsnorm"),
    "use_scalenorm": ("norm", "scalenorm"),
    "use_layernorm": ("norm", "layernorm"),
    "use_simple_rmsnorm": ("norm", "simple_rmsnorm"),
    "use_adaptive_layernorm": ("norm", "adaptive_layernorm"),
    "use_adaptive_rmsnorm": ("norm", "adaptive_rmsnorm"),
    "use_dynamic_tanh": ("norm", "dynamic_tanh"),
    "use_derf": ("norm", "derf"),
}
# other spellings of the same field (old or current x-transformers names)
RENAMES: dict[str, str] = {"rotary_theta": "rotary_base"}


def unknown_argument(owner: str, name: str, known: set[str]) -> TypeError:
    """TypeError for an unknown keyword, with a did-you-mean suggestion when one is close."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return TypeError(f"unknown argument '{name}' for {owner}{hint}")


def known_layer_arguments() -> set[str]:
    """Every keyword a stack (Encoder/Decoder/...) accepts."""
    names = set(LAYER_FIELDS) | set(CHOICE_ALIASES) | set(RENAMES)
    names |= {f"attn_{n}" for n in ATTN_FIELDS} | {f"cross_attn_{n}" for n in ATTN_FIELDS}
    names |= {f"ff_{n}" for n in FF_FIELDS}
    return names


def _route_one(key: str) -> tuple[str, str] | None:
    """The (bucket, field) a keyword belongs to, or None if unknown."""
    key = RENAMES.get(key, key)
    if key.startswith("cross_attn_") and key[len("cross_attn_") :] in ATTN_FIELDS:
        return "cross_attn", key[len("cross_attn_") :]
    if key.startswith("attn_") and key[len("attn_") :] in ATTN_FIELDS:
        return "attn", key[len("attn_") :]
    if key.startswith("ff_") and key[len("ff_") :] in FF_FIELDS:
        return "ff", key[len("ff_") :]
    if key in LAYER_FIELDS:
        return "layers", key
    return None


def route_layer_kwargs(owner: str, kwargs: dict[str, Any]) -> LayersConfig:
    """Build and validate the LayersConfig of a stack from its flat keyword arguments."""
    buckets: dict[str, dict[str, Any]] = {"attn": {}, "cross_attn": {}, "ff": {}, "layers": {}}
    dropped = set()  # x-transformers flags x_attn lacks, at a value that changes nothing
    for key, value in kwargs.items():
        if key in CHOICE_ALIASES:
            _set_choice(owner, buckets["layers"], key, value)
            continue
        target = _route_one(key)
        if target is None and is_unsupported_noop(owner, "__init__", key, value):
            dropped.add(key)
            continue
        if target is None:
            raise unknown_argument(owner, key, known_layer_arguments())
        bucket, name = target
        if isinstance(value, PerLayer):
            value = unwrap(owner, key, name, value, _tuple_typed(bucket, name))
        buckets[bucket][name] = tuple(value) if isinstance(value, list) else value
    per_layer = split_layer_values(buckets)  # one value per layer -> the first one, for now
    attn = AttentionConfig(**buckets["attn"])
    cross = AttentionConfig(**buckets["cross_attn"])  # inherits the shared attn_* values
    ff = FeedForwardConfig(**buckets["ff"])
    for prefix, part in (("attn_", attn), ("cross_attn_", cross), ("ff_", ff)):
        check_field_types(part, owner, prefix)
    attn.validate(owner, "attn_")
    cross.validate(owner, "cross_attn_")
    ff.validate(owner)
    config = LayersConfig(**buckets["layers"], attn=attn, cross_attn=cross, ff=ff)
    check_field_types(config, owner, "")
    validate_layers(config, owner, explicit=set(kwargs) - dropped)
    config = with_layer_values(config, per_layer, owner)
    check_sparse_used(config, owner)
    return config


def _tuple_typed(bucket: str, name: str) -> bool:
    """Whether option ``name`` of ``bucket`` takes a tuple as its own value."""
    cls = {"attn": AttentionConfig, "cross_attn": AttentionConfig, "ff": FeedForwardConfig}
    return bucket in cls and tuple_typed(cls[bucket], name)


def _set_choice(owner: str, layers: dict[str, Any], key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: '{key}' must be True or False, got {value!r}")
    if not value:
        return
    field_name, choice = CHOICE_ALIASES[key]
    previous = layers.get(field_name)
    if previous is not None and previous != choice:
        raise ValueError(
            f"{owner}: '{key}' conflicts with another {field_name} flag selecting "
            f"'{previous}'; choose one normalisation"
        )
    layers[field_name] = choice


def build_config(cls: type, owner: str, kwargs: dict[str, Any]) -> Any:
    """A config dataclass from unprefixed keywords (for the building blocks' own constructors)."""
    names = {f.name for f in fields(cls)}
    kwargs = dict(kwargs)
    for key in [k for k in kwargs if k not in names]:
        if not is_unsupported_noop(owner, "__init__", key, kwargs.pop(key)):
            raise unknown_argument(owner, key, names)
    config = cls(**kwargs)
    check_field_types(config, owner, "")
    return config


def checked_keywords(func: Callable) -> Callable:
    """Give a function's unknown keyword arguments a "did you mean" TypeError.

    For constructors and forwards with an explicit signature: Python's own error names the
    keyword but suggests nothing. x-transformers flags the function lacks are dropped at their
    off value and refused otherwise (:func:`x_attn.compat.is_unsupported_noop`). Keyword values
    with a scalar annotation (bool, int, float, str, optionally ``| None``) are type-checked.
    """
    params = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise AssertionError(f"{func.__qualname__} takes **kwargs; check them where they land")
    known = {name for name in params if name != "self"}
    annotations = {name: str(p.annotation) for name, p in params.items()}

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        owner = type(args[0]).__name__ if args else func.__qualname__
        suffix = "" if func.__name__ == "__init__" else f".{func.__name__}"
        for key in list(kwargs):
            if key in known:
                check_value_type(key, kwargs[key], annotations[key], owner + suffix)
            elif not is_unsupported_noop(owner, func.__name__, key, kwargs.pop(key)):
                raise unknown_argument(owner + suffix, key, known)
        return func(*args, **kwargs)

    return wrapper
