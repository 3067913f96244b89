"""Token-indexed per-layer embeddings of the feed-forwards (x-transformers' ``ff_deep_embed``),
in the spirit of STEM (Sadhukhan et al., "STEM: Scaling Transformers with Embedding Modules",
arXiv 2601.10639), whose feed-forwards read a per-layer embedding looked up by the token id.

Here each feed-forward run ``k`` multiplies its output by a learned vector of the current token,
``table[id, k]`` (d,), initialised to ones, so the model starts as the plain one. The vector
depends only on the row's own token id, so causality, padding and the KV cache are unaffected
(a cached call passes the ids of its new tokens). Rows without a token id (memory tokens,
prepended embeddings, class tokens: the rows in front of the ids) are not scaled.

Shape legend: b batch, n rows of the stream, t rows with token ids (the last t), V vocabulary,
L feed-forward runs, d model dim.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def ff_scales(given: Any, n: int, runs: int, dim: int, owner: str) -> list[Tensor] | None:
    """One (b, n, d) multiplier per feed-forward run from ``deep_embeds_and_ids`` =
    (table (V, L, d), ids (b, t) with t <= n, right-aligned on the stream); None if not given."""
    if given is None:
        return None
    if not (isinstance(given, (tuple, list)) and len(given) == 2):
        raise TypeError(
            f"{owner}: 'deep_embeds_and_ids' must be a (table, ids) pair, table (vocabulary, "
            f"feed-forward runs, dim) and ids (batch, tokens), got {type(given).__name__}"
        )
    table, ids = given
    if not isinstance(table, Tensor) or table.ndim != 3 or tuple(table.shape[1:]) != (runs, dim):
        shape = tuple(table.shape) if isinstance(table, Tensor) else type(table).__name__
        raise ValueError(
            f"{owner}: the deep embedding table must be (vocabulary, {runs}, {dim}): one "
            f"vector per feed-forward run of this call, got {shape}"
        )
    if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.dtype.is_floating_point:
        raise TypeError(f"{owner}: deep embedding ids must be (batch, tokens) integer ids")
    if ids.shape[1] > n:
        raise ValueError(f"{owner}: {ids.shape[1]} deep embedding ids for a stream of {n} rows")
    scales = table[ids]  # (b, t, L, d)
    lead = n - ids.shape[1]
    if lead:
        ones = scales.new_ones(scales.shape[0], lead, runs, dim)
        scales = torch.cat((ones, scales), dim=1)
    return list(scales.unbind(2))


def deep_embed_table(on: bool, num_tokens: int, stack: Any, owner: str) -> nn.Parameter | None:
    """The (num_tokens, feed-forward runs, d) table of ``ff_deep_embed``, ones; or None."""
    if not isinstance(on, bool):
        raise TypeError(f"{owner}: 'ff_deep_embed' must be True or False, got {on!r}")
    if not on:
        return None
    if stack.config.reversible:
        raise ValueError(
            f"{owner}: ff_deep_embed scales each feed-forward output, which the reversible "
            "stack (reversible=True) does not expose; drop one of them"
        )
    runs = stack.types.count("f")
    if not runs:
        raise ValueError(
            f"{owner}: ff_deep_embed scales feed-forward outputs, but the stack has none"
        )
    return nn.Parameter(torch.ones(num_tokens, runs, stack.dim))
