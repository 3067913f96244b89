"""Per-layer values of block options (x-transformers: a tuple with one value per layer).

``Decoder(depth=12, ff_mult=(4,) * 6 + (2,) * 6)`` gives the i-th feed-forward layer
``mult=ff_mult[i]``; ``attn_*`` tuples have one value per self-attention layer and
``cross_attn_*`` tuples one per cross-attention layer (a per-layer ``attn_*`` value is not
inherited by cross-attention, as in x-transformers). Options whose own type is a tuple are never
split. :func:`x_attn.layers.plan.layer_schedule` makes such tuples.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from x_attn.config import AttentionConfig, FeedForwardConfig, LayersConfig
from x_attn.layers.plan import count, stack_types
from x_attn.validation import check_field_types

_KIND = {"attn": ("a", AttentionConfig), "cross_attn": ("c", AttentionConfig)}
_KIND["ff"] = ("f", FeedForwardConfig)
_PREFIX = {"attn": "attn_", "cross_attn": "cross_attn_", "ff": "ff_"}


def tuple_typed(cls: type, name: str) -> bool:
    annotation = {f.name: str(f.type) for f in fields(cls)}.get(name, "")
    return annotation.startswith("tuple")


def split_layer_values(buckets: dict[str, dict[str, Any]]) -> dict[str, dict[str, tuple]]:
    """Take the per-layer tuples out of the block buckets (in place).

    Each per-layer field keeps its first value in its bucket, so that the shared config is
    checked as usual; a per-layer ``attn_*`` field is dropped from what cross-attention
    inherits. Returns ``{bucket: {field: values}}``.
    """
    per_layer: dict[str, dict[str, tuple]] = {}
    for bucket, (_, cls) in _KIND.items():
        found = {
            name: tuple(value)
            for name, value in buckets[bucket].items()
            if isinstance(value, tuple) and value and not tuple_typed(cls, name)
        }
        per_layer[bucket] = found
        buckets[bucket].update({name: values[0] for name, values in found.items()})
    inherited = {k: v for k, v in buckets["attn"].items() if k not in per_layer["attn"]}
    buckets["cross_attn"] = {**inherited, **buckets["cross_attn"]}
    return per_layer


def with_layer_values(
    config: LayersConfig, per_layer: dict[str, dict[str, tuple]], owner: str
) -> LayersConfig:
    """``config`` with its per-layer values checked (count and every layer's config)."""
    types = stack_types(config)
    values = []
    for bucket, found in per_layer.items():
        kind, _ = _KIND[bucket]
        n = count(types, kind)
        for name, vals in found.items():
            flag = _PREFIX[bucket] + name
            if len(vals) != n:
                raise ValueError(
                    f"{owner}: '{flag}' has {len(vals)} values, but the stack builds {n} "
                    f"'{kind}' layers; give one value, or one per '{kind}' layer"
                )
            if name == "dim_head" and config.rotary_pos_emb:
                raise ValueError(
                    f"{owner}: a per-layer '{flag}' with rotary_pos_emb: the rotary dims are "
                    "shared by every layer; give one attn_dim_head"
                )
            values.append((bucket, name, vals))
    result = replace(config, layer_values=tuple(values))
    for bucket in per_layer:
        kind, _ = _KIND[bucket]
        for index in range(count(types, kind) if per_layer[bucket] else 0):
            part = layer_config(result, bucket, index)
            check_field_types(part, owner, _PREFIX[bucket])
            args = (owner, _PREFIX[bucket]) if bucket != "ff" else (owner,)
            part.validate(*args)
    return result


def layer_config(config: LayersConfig, bucket: str, index: int) -> Any:
    """The config of the ``index``-th layer of ``bucket`` ("attn", "cross_attn" or "ff")."""
    shared = getattr(config, bucket)
    own = {name: vals[index] for b, name, vals in config.layer_values if b == bucket}
    return replace(shared, **own) if own else shared
