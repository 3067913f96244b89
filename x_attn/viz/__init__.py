"""Seeing attention: maps from a model, heatmaps, line view, patterns, GIF, HTML view.

matplotlib is an optional extra (``pip install 'x-attn[viz]'``); the HTML view needs nothing.
"""

from x_attn.viz.animate import animate
from x_attn.viz.html import to_html
from x_attn.viz.maps import AttentionMaps, attention_maps, downsample
from x_attn.viz.patterns import causal_pattern, padding_pattern, support_pattern
from x_attn.viz.plots import plot_heads, plot_lines, plot_map, plot_pattern

__all__ = [
    "AttentionMaps",
    "animate",
    "attention_maps",
    "causal_pattern",
    "downsample",
    "padding_pattern",
    "plot_heads",
    "plot_lines",
    "plot_map",
    "plot_pattern",
    "support_pattern",
    "to_html",
]
