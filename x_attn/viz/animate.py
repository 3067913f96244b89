"""An animated GIF that steps through every (layer, head) attention map.

Frames are drawn with matplotlib and written with Pillow (a matplotlib dependency).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from x_attn.viz.backend import pyplot
from x_attn.viz.maps import AttentionMaps
from x_attn.viz.plots import CMAP, plot_map

__all__ = ["animate"]


def animate(
    maps: AttentionMaps,
    path: str | Path,
    seconds_per_frame: float = 0.8,
    cmap: str = CMAP,
    dpi: int = 80,
) -> list[tuple[int, int]]:
    """Write a GIF with one frame per (layer, head), in layer-major order.

    Returns the (layer, head) shown by each frame.
    """
    from PIL import Image

    fig, ax, image = frame_figure(maps, cmap, dpi)
    frames, order = [], []
    for layer in range(maps.layers):
        for head in range(maps.heads):
            image.set_data(maps.weights[layer, head])
            ax.set_title(f"layer {layer}  head {head}")
            fig.canvas.draw()
            frames.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3]))
            order.append((layer, head))
    pyplot().close(fig)
    frames[0].save(
        Path(path),
        save_all=True,
        append_images=frames[1:],
        loop=0,
        duration=int(seconds_per_frame * 1000),
    )
    return order


def frame_figure(maps: AttentionMaps, cmap: str = CMAP, dpi: int = 80):
    """(figure, axes, image) that every frame is drawn on; the same geometry each call."""
    side = min(9.0, 2.8 + 0.2 * len(maps.keys))
    fig, ax = pyplot().subplots(figsize=(side, side), dpi=dpi)
    image = plot_map(maps.weights[0, 0], maps.queries, maps.keys, ax=ax, cmap=cmap)
    fig.tight_layout()
    return fig, ax, image
