"""Checks of the block-sparse attention options: the Sparse Transformer (arXiv 1904.10509)
patterns and BigBird (arXiv 2007.14062).

A size must be a positive int (BigBird's global and random block counts may be 0), an option
without its pattern would be silently ignored, and the two patterns cannot be combined.
Cross-attention layers take no pattern (a context has no positions).
"""

from __future__ import annotations

from typing import Any

from x_attn.utils import check_positive_int

PATTERNS = ("strided", "fixed")
# option -> its default, per mechanism switch
_SPARSE = {"sparse_block": 128, "sparse_summary": None}
_BIGBIRD = {
    "bigbird_block": 64,
    "bigbird_window_blocks": 3,
    "bigbird_global_blocks": 2,
    "bigbird_random_blocks": 3,
    "bigbird_seed": 0,
}


def validate_sparse(config: Any, owner: str, prefix: str) -> None:
    """ValueError/TypeError naming the flag for a block-sparse option that cannot work."""
    pattern, bigbird = config.sparse_pattern, config.bigbird
    if pattern is not None and pattern not in PATTERNS:
        raise ValueError(
            f"{owner}: '{prefix}sparse_pattern' must be one of {PATTERNS} (the Sparse "
            f"Transformer's patterns; BigBird is '{prefix}bigbird=True'), got {pattern!r}"
        )
    if bigbird not in (True, False):
        raise TypeError(f"{owner}: '{prefix}bigbird' must be True or False, got {bigbird!r}")
    if pattern is not None and bigbird:
        raise ValueError(
            f"{owner}: '{prefix}sparse_pattern' and '{prefix}bigbird' are two sparsity patterns "
            "for the same layers; choose one (per_layer(...) mixes them across layers)"
        )
    if pattern is not None:
        _check_sparse(config, owner, prefix)
    if bigbird:
        _check_bigbird(config, owner, prefix)


def _check_sparse(config: Any, owner: str, prefix: str) -> None:
    check_positive_int(f"{prefix}sparse_block", config.sparse_block, owner)
    summary = config.sparse_summary
    if config.sparse_pattern == "strided" and summary is not None:
        raise ValueError(
            f"{owner}: '{prefix}sparse_summary' sizes the summary positions of the fixed "
            f"pattern; the strided one has none: drop it or use {prefix}sparse_pattern='fixed'"
        )
    if summary is not None:
        check_positive_int(f"{prefix}sparse_summary", summary, owner)
        if summary > config.sparse_block:
            raise ValueError(
                f"{owner}: '{prefix}sparse_summary={summary}' must be at most "
                f"'{prefix}sparse_block={config.sparse_block}' (the last c positions of a block)"
            )


def _check_bigbird(config: Any, owner: str, prefix: str) -> None:
    check_positive_int(f"{prefix}bigbird_block", config.bigbird_block, owner)
    check_positive_int(f"{prefix}bigbird_window_blocks", config.bigbird_window_blocks, owner)
    if config.bigbird_window_blocks % 2 == 0:
        raise ValueError(
            f"{owner}: '{prefix}bigbird_window_blocks' must be odd (the own block and as many "
            f"on each side), got {config.bigbird_window_blocks}"
        )
    for name in ("bigbird_global_blocks", "bigbird_random_blocks", "bigbird_seed"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{owner}: '{prefix}{name}' must be an int, got {value!r}")
        if value < 0:
            raise ValueError(f"{owner}: '{prefix}{name}' must be >= 0, got {value}")


def check_sparse_used(layers: Any, owner: str) -> None:
    """ValueError for a block-sparse option given while no self-attention layer of the stack
    (``layers``: its LayersConfig, per-layer values included) has its pattern."""
    attn = layers.attn
    per_layer = {name: vals for b, name, vals in layers.layer_values if b == "attn"}

    def values(name: str) -> tuple[Any, ...]:
        return per_layer.get(name, (getattr(attn, name),))

    used = {
        "sparse_pattern": any(v is not None for v in values("sparse_pattern")),
        "bigbird": any(values("bigbird")),
    }
    for switch, options in (("sparse_pattern", _SPARSE), ("bigbird", _BIGBIRD)):
        for name, default in options.items():
            if not used[switch] and any(v != default for v in values(name)):
                raise ValueError(
                    f"{owner}: 'attn_{name}' is set but no layer has 'attn_{switch}'; set "
                    f"attn_{switch} or drop attn_{name}"
                )
