"""Static pictures of attention: heatmaps per layer and head, a token-to-token line view, and
the sparsity pattern of a mask. matplotlib is imported on first use (optional extra ``viz``).

Every picture draws the numbers it is given without rescaling: heatmaps show weights on a
fixed 0..1 colour scale (``imshow`` data is the map itself), the line view gives each line the
opacity of its weight.

Shape legend: l layers, h heads, i queries, j keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from x_attn.viz.backend import pyplot
from x_attn.viz.maps import AttentionMaps

__all__ = ["plot_heads", "plot_lines", "plot_map", "plot_pattern"]

CMAP = "viridis"
_MAX_LABELS = 48  # beyond this many tokens, tick labels are thinned out


def plot_map(
    weights: np.ndarray,
    queries: Sequence[str],
    keys: Sequence[str],
    ax=None,
    title: str = "",
    cmap: str = CMAP,
    colorbar: bool = False,
):
    """One (i, j) attention map as a heatmap with token labels; returns the AxesImage."""
    plt = pyplot()
    if ax is None:
        side = min(12.0, 2.5 + 0.22 * max(len(queries), len(keys)))
        _, ax = plt.subplots(figsize=(side, side))
    image = ax.imshow(
        np.asarray(weights), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto"
    )
    _label_axis(ax.set_xticks, ax.set_xticklabels, keys, rotation=90)
    _label_axis(ax.set_yticks, ax.set_yticklabels, queries)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046)
    return image


def plot_heads(
    maps: AttentionMaps,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    cmap: str = CMAP,
):
    """A grid of heatmaps, one row per layer and one column per head; returns the Figure."""
    plt = pyplot()
    layers = list(range(maps.layers)) if layers is None else list(layers)
    heads = list(range(maps.heads)) if heads is None else list(heads)
    cell = min(4.0, 1.6 + 0.06 * len(maps.keys))
    fig, axes = plt.subplots(
        len(layers),
        len(heads),
        squeeze=False,
        figsize=(cell * len(heads) + 1.0, cell * len(layers) + 0.6),
    )
    for row, layer in enumerate(layers):
        for col, head in enumerate(heads):
            ax = axes[row][col]
            plot_map(
                maps.weights[layer, head],
                maps.queries,
                maps.keys,
                ax=ax,
                title=f"layer {layer} head {head}",
                cmap=cmap,
            )
            if col:
                ax.set_ylabel("")
            if row != len(layers) - 1:
                ax.set_xlabel("")
    fig.tight_layout()
    return fig


def plot_lines(
    weights: np.ndarray,
    queries: Sequence[str],
    keys: Sequence[str],
    ax=None,
    color: str = "#1f5fa8",
    min_weight: float = 0.0,
):
    """Token-to-token view: queries on the left, keys on the right, one line per pair whose
    opacity is its attention weight (pairs below ``min_weight`` are left out).

    Returns the LineCollection; ``get_alpha()`` per line are the weights drawn.
    """
    from matplotlib.collections import LineCollection

    plt = pyplot()
    weights = np.asarray(weights, dtype=float)
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 0.6 + 0.28 * max(len(queries), len(keys))))
    i_idx, j_idx = (
        np.nonzero(weights > min_weight)
        if min_weight > 0
        else np.indices(weights.shape).reshape(2, -1)
    )
    segments = [[(0.0, -float(i)), (1.0, -float(j))] for i, j in zip(i_idx, j_idx)]
    alphas = np.clip(weights[i_idx, j_idx], 0.0, 1.0)
    lines = LineCollection(segments, colors=color, linewidths=2.0)
    lines.set_alpha(list(alphas))
    ax.add_collection(lines)
    for x, names, align in ((-0.05, queries, "right"), (1.05, keys, "left")):
        for k, name in enumerate(names):
            ax.text(x, -k, _show(name), ha=align, va="center", fontsize=9)
    ax.set_xlim(-0.6, 1.6)
    ax.set_ylim(-max(len(queries), len(keys)) + 0.5, 0.5)
    ax.axis("off")
    return lines


def plot_pattern(
    mask: np.ndarray,
    queries: Sequence[str] | None = None,
    keys: Sequence[str] | None = None,
    ax=None,
    title: str = "",
):
    """Which query may attend to which key: a boolean (i, j) mask, black = allowed."""
    mask = np.asarray(mask, dtype=bool)
    ax = ax if ax is not None else _square_axes(max(mask.shape), 0.12, 8.0)
    image = ax.imshow(
        mask.astype(float),
        cmap="Greys",
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
        aspect="equal",
    )
    if queries is not None:
        _label_axis(ax.set_yticks, ax.set_yticklabels, queries)
    if keys is not None:
        _label_axis(ax.set_xticks, ax.set_xticklabels, keys, rotation=90)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    density = mask.mean() if mask.size else 0.0
    ax.set_title(title or f"{mask.sum()} of {mask.size} pairs attend ({density:.0%})")
    return image


def _square_axes(tokens: int, inches_per_token: float, largest: float):
    side = min(largest, 2.5 + inches_per_token * tokens)
    return pyplot().subplots(figsize=(side, side))[1]


def _label_axis(set_ticks, set_labels, names: Sequence[str], rotation: int = 0) -> None:
    step = max(1, int(np.ceil(len(names) / _MAX_LABELS)))
    ticks = list(range(0, len(names), step))
    set_ticks(ticks)
    set_labels([_show(names[t]) for t in ticks], rotation=rotation, fontsize=8)


def _show(label: str) -> str:
    """Whitespace made visible in tick labels."""
    return {" ": "\u2423", "\n": "\\n", "\t": "\\t"}.get(label, label)
