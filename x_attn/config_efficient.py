"""Checks of the options of Reformer LSH attention (arXiv 2001.04451) and Linformer (arXiv
2006.04768).

Sizes must be positive ints, a fixed bucket count 1 or even (the angular hash argmax([xR; -xR])
gives an even number of buckets), and no option may be set without its mechanism (it would be
silently ignored).
"""

from __future__ import annotations

from typing import Any

from x_attn.utils import check_positive_int

# option -> its default (each needs ``lsh``)
_OPTIONS = {
    "lsh": ("LSH attention", {"lsh_bucket_size": 64, "lsh_n_hashes": 8, "lsh_n_buckets": None}),
    "linformer": ("Linformer", {"linformer_k": 256, "linformer_max_seq_len": None}),
}
SHARES = ("none", "headwise", "kv")


def validate_efficient(config: Any, owner: str, prefix: str) -> None:
    """ValueError naming the flag for an option that is wrong or has no effect."""
    for switch, (words, options) in _OPTIONS.items():
        for name, default in options.items():
            value = getattr(config, name)
            if value is not None:
                check_positive_int(f"{prefix}{name}", value, owner)
            if value != default and not getattr(config, switch):
                raise ValueError(
                    f"{owner}: '{prefix}{name}' is an option of {words}, which is off; set "
                    f"{prefix}{switch}=True or drop {prefix}{name}"
                )
    _validate_linformer(config, owner, prefix)
    buckets = config.lsh_n_buckets
    if buckets is not None and buckets > 1 and buckets % 2:
        raise ValueError(
            f"{owner}: '{prefix}lsh_n_buckets' must be 1 or even (the angular hash "
            f"argmax([xR; -xR]) has an even number of buckets), got {buckets}"
        )


def _validate_linformer(config: Any, owner: str, prefix: str) -> None:
    share = config.linformer_share
    if share not in SHARES:
        layerwise = (
            " (layerwise sharing across layers is not offered)" if share == "layerwise" else ""
        )
        raise ValueError(
            f"{owner}: '{prefix}linformer_share' must be one of {SHARES}, got {share!r}{layerwise}"
        )
    if share != "none" and not config.linformer:
        raise ValueError(
            f"{owner}: '{prefix}linformer_share' is an option of Linformer, which is off; set "
            f"{prefix}linformer=True or drop {prefix}linformer_share"
        )
    if not config.linformer:
        return
    n = config.linformer_max_seq_len
    if n is None:
        raise ValueError(
            f"{owner}: {prefix}linformer=True needs '{prefix}linformer_max_seq_len', the fixed "
            "length its projections span (shorter inputs use their first columns)"
        )
    if config.linformer_k > n:
        raise ValueError(
            f"{owner}: '{prefix}linformer_k={config.linformer_k}' exceeds "
            f"'{prefix}linformer_max_seq_len={n}': projecting n keys to more than n slots "
            "saves nothing; use k <= max length"
        )
