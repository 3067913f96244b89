"""Attention maps of a model, as one (layers, heads, queries, keys) array with token labels.

Maps come from the model itself (``return_attn=True``, which runs the manual kernel for that
call and returns its softmax weights). Mechanisms without a score matrix (linear attention,
Performer) will provide implied maps computed from q and k on request; this version has none.

Shape legend: l layers, h heads, i queries, j keys, b batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["AttentionMaps", "attention_maps", "downsample"]


@dataclass(frozen=True)
class AttentionMaps:
    """Self-attention weights of one sequence.

    Attributes:
        weights: (l, h, i, j) float array; each row sums to 1 over the keys it may attend to
            (0 for a query with nothing to attend to).
        queries: i labels of the query tokens.
        keys: j labels of the keys: learned memory key/values first (``[kv0]``, ...), then
            the queries' tokens (learned memory tokens are named ``[mem0]``, ...); keys
            projected along the sequence (Linformer, fewer than the queries) are ``[slot0]``, ...
    """

    weights: np.ndarray
    queries: list[str]
    keys: list[str]

    def __post_init__(self) -> None:
        if self.weights.ndim != 4:
            raise ValueError(f"weights must be (layers, heads, i, j), got {self.weights.shape}")
        _, _, i, j = self.weights.shape
        if len(self.queries) != i or len(self.keys) != j:
            raise ValueError(
                f"{len(self.queries)} query / {len(self.keys)} key labels for maps of "
                f"{i} queries x {j} keys"
            )

    @property
    def layers(self) -> int:
        return self.weights.shape[0]

    @property
    def heads(self) -> int:
        return self.weights.shape[1]


@torch.no_grad()
def attention_maps(
    model: nn.Module,
    tokens: Tensor,
    labels: Sequence[str] | None = None,
    mask: Tensor | None = None,
    index: int = 0,
) -> AttentionMaps:
    """The self-attention maps of ``model`` on ``tokens`` (b, n), for batch row ``index``.

    ``labels`` names the n tokens (default: their ids). Cross-attention maps are left out.
    """
    if tokens.ndim == 1:
        tokens = tokens.unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        _, maps = model(tokens, mask=mask, return_attn=True)
    finally:
        model.train(was_training)
    weights = torch.stack([m[index] for m in _self_attention(model, maps)]).float()
    weights = weights.cpu().numpy()  # (l, h, i, j)
    names = list(labels) if labels is not None else [str(int(t)) for t in tokens[index]]
    if len(names) != tokens.shape[-1]:
        raise ValueError(f"{len(names)} labels for {tokens.shape[-1]} tokens")
    _, _, i, j = weights.shape
    query_names = [f"[mem{k}]" for k in range(i - len(names))] + names  # memory tokens
    key_names = [f"[kv{k}]" for k in range(j - i)] + query_names  # memory key/values
    if j < i:  # fewer keys than queries: slots projected along the sequence (Linformer)
        key_names = [f"[slot{k}]" for k in range(j)]
    return AttentionMaps(weights, query_names, key_names)


def _self_attention(model: nn.Module, maps: list[Tensor]) -> list[Tensor]:
    """The maps of self-attention layers ('a'), not cross-attention ('c'), in layer order."""
    types = getattr(getattr(model, "attn_layers", None), "types", None)
    if types is None:
        return list(maps)
    kinds = [t for t in types if t in "ac"]
    return [m for m, kind in zip(maps, kinds) if kind == "a"]


def downsample(maps: AttentionMaps, max_tokens: int) -> AttentionMaps:
    """Pool queries and keys into at most ``max_tokens`` contiguous groups each.

    A pooled row is the mean of its queries' rows, a pooled column the sum of its keys'
    columns, so every pooled row still sums to the same total (1 for a query that attends).
    Group labels read ``first..last``.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    rows, row_labels = _groups(maps.queries, max_tokens)
    cols, col_labels = _groups(maps.keys, max_tokens)
    w = maps.weights
    pooled = np.stack([w[..., r, :].mean(axis=-2) for r in rows], axis=-2)
    pooled = np.stack([pooled[..., c].sum(axis=-1) for c in cols], axis=-1)
    return AttentionMaps(pooled, row_labels, col_labels)


def _groups(labels: list[str], limit: int) -> tuple[list[slice], list[str]]:
    n = len(labels)
    if n <= limit:
        return [slice(i, i + 1) for i in range(n)], list(labels)
    edges = np.linspace(0, n, limit + 1).round().astype(int)
    slices = [slice(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    names = [
        labels[s.start] + (f"..{labels[s.stop - 1]}" if s.stop - s.start > 1 else "")
        for s in slices
    ]
    return slices, names
