"""A self-contained, interactive HTML view of attention maps, in the spirit of bertviz.

One file, no network: the maps are embedded as JSON and drawn by a small inline script. It
shows a head view (queries on the left, keys on the right, lines whose opacity is the weight;
hover a query to isolate its lines), a model view (every layer x head as a thumbnail; click to
select) and the selected head's weights as a table of numbers. Long sequences are pooled to
``max_tokens`` groups first (:func:`x_attn.viz.maps.downsample`). ``#layer=L&head=H`` in the
address selects a head.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from x_attn.viz.maps import AttentionMaps, downsample

__all__ = ["to_html"]


def to_html(
    maps: AttentionMaps,
    path: str | Path | None = None,
    title: str = "Attention",
    max_tokens: int = 64,
    decimals: int = 4,
) -> str:
    """The page as a string; also written to ``path`` when given."""
    shown = downsample(maps, max_tokens)
    note = (
        f"{maps.layers} layers x {maps.heads} heads, {len(maps.queries)} queries x "
        f"{len(maps.keys)} keys"
    )
    if shown.weights.shape != maps.weights.shape:
        note += (
            f", pooled into {len(shown.queries)} x {len(shown.keys)} groups (rows: mean over "
            "the group's queries; columns: sum over the group's keys)"
        )
    payload = {
        "weights": shown.weights.round(decimals).tolist(),
        "queries": shown.queries,
        "keys": shown.keys,
        "note": note + ".",
    }
    data = json.dumps(payload).replace("</", "<\\/")  # no early </script>
    template = resources.files("x_attn.viz").joinpath("view.html").read_text(encoding="utf-8")
    page = template.replace("__TITLE__", _escape(title)).replace("__DATA__", data)
    if path is not None:
        Path(path).write_text(page, encoding="utf-8")
    return page


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
