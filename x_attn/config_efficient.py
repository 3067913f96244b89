"""Checks of the options of Reformer LSH attention (arXiv 2001.04451).

Sizes must be positive ints, a fixed bucket count 1 or even (the angular hash argmax([xR; -xR])
gives an even number of buckets), and no option may be set without its mechanism (it would be
silently ignored).
"""

from __future__ import annotations

from typing import Any

from x_attn.utils import check_positive_int

# option -> its default (each needs ``lsh``)
_LSH_OPTIONS = {"lsh_bucket_size": 64, "lsh_n_hashes": 8, "lsh_n_buckets": None}


def validate_efficient(config: Any, owner: str, prefix: str) -> None:
    """ValueError naming the flag for an LSH option that is wrong or has no effect."""
    for name, default in _LSH_OPTIONS.items():
        value = getattr(config, name)
        if value is not None:
            check_positive_int(f"{prefix}{name}", value, owner)
        if value != default and not config.lsh:
            raise ValueError(
                f"{owner}: '{prefix}{name}' is an option of LSH attention, which is off; set "
                f"{prefix}lsh=True or drop {prefix}{name}"
            )
    buckets = config.lsh_n_buckets
    if buckets is not None and buckets > 1 and buckets % 2:
        raise ValueError(
            f"{owner}: '{prefix}lsh_n_buckets' must be 1 or even (the angular hash "
            f"argmax([xR; -xR]) has an even number of buckets), got {buckets}"
        )
