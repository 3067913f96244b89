"""Sparsity patterns: which query may (or does) attend to which key, as boolean (i, j) arrays.

``causal_pattern`` and ``padding_pattern`` are the masks x_attn applies (True = may attend,
causal aligned bottom-right); ``support_pattern`` reads the pattern a mechanism actually
produced off its maps (top-k keeps k keys per query, entmax-1.5 zeroes many weights exactly).

Shape legend: i queries, j keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["causal_pattern", "padding_pattern", "support_pattern"]


def causal_pattern(queries: int, keys: int | None = None) -> np.ndarray:
    """(i, j) causal mask aligned bottom-right: the last query sees every key."""
    keys = queries if keys is None else keys
    offset = keys - queries
    return np.arange(keys)[None, :] <= np.arange(queries)[:, None] + offset


def padding_pattern(key_mask: Sequence[bool], causal: bool = False) -> np.ndarray:
    """(n, n) mask of a sequence whose keys with ``key_mask`` False are padding."""
    keep = np.asarray(key_mask, dtype=bool)
    pattern = np.broadcast_to(keep[None, :], (len(keep), len(keep))).copy()
    return pattern & causal_pattern(len(keep)) if causal else pattern


def support_pattern(weights: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """(…, i, j) True where a map's weight exceeds ``threshold``."""
    return np.asarray(weights) > threshold
