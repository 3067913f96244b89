"""Flat x-transformers style keyword arguments -> typed configs.

Routing is by longest prefix: ``cross_attn_*`` -> cross attention only, ``attn_*`` -> self and
cross attention, ``ff_*`` -> feed-forward, anything else -> the stack. Old boolean spellings of
exclusive choices (``use_rmsnorm=True``) map to one field (``norm="rmsnorm"``). An unknown name
raises TypeError with the closest known name.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

from x_attn.config import AttentionConfig, FeedForwardConfig, LayersConfig
from x_attn.per_layer import PerLayer, check_target, layer_configs
from x_attn.validation import check_field_types, stack_layer_types, validate_layers

ATTN_FIELDS = {f.name for f in fields(AttentionConfig)}
FF_FIELDS = {f.name for f in fields(FeedForwardConfig)}
LAYER_FIELDS = {f.name for f in fields(LayersConfig)} - {
    "attn",
    "cross_attn",
    "ff",
    "norm",
    "per_layer_attn",
}

# boolean flag -> (config field, value it selects)
CHOICE_ALIASES: dict[str, tuple[str, str]] = {
    "use_rmsnorm": ("norm", "rmsnorm"),
    "use_scalenorm": ("norm", "scalenorm"),
    "use_layernorm": ("norm", "layernorm"),
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
    per_layer: dict[str, PerLayer] = {}  # attn_* options with one value per self-attention layer
    for key, value in kwargs.items():
        if key in CHOICE_ALIASES:
            _set_choice(owner, buckets["layers"], key, value)
            continue
        target = _route_one(key)
        if target is None:
            raise unknown_argument(owner, key, known_layer_arguments())
        bucket, name = target
        if isinstance(value, PerLayer):
            check_target(owner, key, bucket, name)
            per_layer[name] = value
            continue
        buckets[bucket][name] = tuple(value) if isinstance(value, list) else value
    attn = AttentionConfig(**buckets["attn"])
    cross = AttentionConfig(**{**buckets["attn"], **buckets["cross_attn"]})
    ff = FeedForwardConfig(**buckets["ff"])
    for prefix, part in (("attn_", attn), ("cross_attn_", cross), ("ff_", ff)):
        check_field_types(part, owner, prefix)
    attn.validate(owner, "attn_")
    cross.validate(owner, "cross_attn_")
    ff.validate(owner)
    config = LayersConfig(**buckets["layers"], attn=attn, cross_attn=cross, ff=ff)
    check_field_types(config, owner, "")
    validate_layers(config, owner, explicit=set(kwargs))
    if per_layer:
        count = stack_layer_types(config).count("a")
        config = replace(config, per_layer_attn=layer_configs(owner, attn, count, per_layer))
    return config


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
    for key in kwargs:
        if key not in names:
            raise unknown_argument(owner, key, names)
    config = cls(**kwargs)
    check_field_types(config, owner, "")
    return config


def checked_keywords(func: Callable) -> Callable:
    """Give a function's unknown keyword arguments a "did you mean" TypeError.

    For constructors and forwards with an explicit signature: Python's own error names the
    keyword but suggests nothing.
    """
    params = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise AssertionError(f"{func.__qualname__} takes **kwargs; check them where they land")
    known = {name for name in params if name != "self"}

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for key in kwargs:
            if key not in known:
                owner = type(args[0]).__name__ if args else func.__qualname__
                suffix = "" if func.__name__ == "__init__" else f".{func.__name__}"
                raise unknown_argument(owner + suffix, key, known)
        return func(*args, **kwargs)

    return wrapper
