"""x_attn.viz draws the model's own attention: image data, pixels, GIF frames, lines, HTML."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from PIL import Image  # noqa: E402

from x_attn import Decoder, TransformerWrapper  # noqa: E402
from x_attn.viz import (  # noqa: E402
    AttentionMaps,
    animate,
    attention_maps,
    causal_pattern,
    downsample,
    padding_pattern,
    plot_heads,
    plot_lines,
    plot_map,
    plot_pattern,
    support_pattern,
    to_html,
)
from x_attn.viz.animate import frame_figure  # noqa: E402

TEXT = "to be, or not"


def _model(**flags):
    torch.manual_seed(0)
    net = TransformerWrapper(
        num_tokens=32, max_seq_len=32, attn_layers=Decoder(dim=16, depth=2, heads=2, **flags)
    )
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5 * torch.randn_like(p))  # sharper, distinct maps per head
    return net


def _maps(**flags) -> tuple[AttentionMaps, list[torch.Tensor]]:
    net = _model(**flags)
    ids = torch.tensor([[ord(c) % 32 for c in TEXT]])
    maps = attention_maps(net, ids, list(TEXT))
    with torch.no_grad():
        _, raw = net.eval()(ids, return_attn=True)
    return maps, raw


def test_maps_are_the_models_return_attn():
    maps, raw = _maps()
    assert maps.weights.shape == (2, 2, len(TEXT), len(TEXT))
    for layer in range(2):
        np.testing.assert_array_equal(maps.weights[layer], raw[layer][0].numpy())
    assert maps.queries == maps.keys == list(TEXT)


def _pixel_values(fig, ax, shape, pixels):
    """Grey level (0..1) at the centre of each (i, j) cell of an imshow on ``ax``."""
    height = pixels.shape[0]
    out = np.empty(shape)
    for i in range(shape[0]):
        for j in range(shape[1]):
            x, y = ax.transData.transform((j, i))
            out[i, j] = pixels[int(round(height - y)), int(round(x))] / 255.0
    return out


def test_heatmaps_draw_exactly_the_maps():
    maps, _ = _maps()
    fig = plot_heads(maps)
    for ax, (layer, head) in zip(fig.axes, [(0, 0), (0, 1), (1, 0), (1, 1)]):
        np.testing.assert_array_equal(ax.images[0].get_array(), maps.weights[layer, head])
        assert ax.images[0].get_clim() == (0.0, 1.0)
        assert [t.get_text() for t in ax.get_xticklabels()][:3] == ["t", "o", "\u2423"]
    # the pixels: a grey colour scale maps weight w to grey level w
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    plot_map(maps.weights[1, 0], maps.queries, maps.keys, ax=ax, cmap="gray")
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., 0]
    drawn = _pixel_values(fig, ax, maps.weights.shape[2:], pixels)
    # tolerance: 8-bit colour and the resampling of imshow
    np.testing.assert_allclose(drawn, maps.weights[1, 0], atol=2.5 / 255)
    plt.close("all")


def test_gif_has_one_frame_per_layer_and_head_showing_its_map(tmp_path):
    maps, _ = _maps()
    order = animate(maps, tmp_path / "a.gif", cmap="gray")
    assert order == [(0, 0), (0, 1), (1, 0), (1, 1)]
    fig, ax, _ = frame_figure(maps, "gray")
    fig.canvas.draw()
    gif = Image.open(tmp_path / "a.gif")
    assert gif.n_frames == 4
    for index, (layer, head) in enumerate(order):
        gif.seek(index)
        pixels = np.asarray(gif.convert("RGB"))[..., 0]
        drawn = _pixel_values(fig, ax, maps.weights.shape[2:], pixels)
        np.testing.assert_allclose(drawn, maps.weights[layer, head], atol=2.5 / 255)


def test_line_view_opacity_is_each_weight():
    maps, _ = _maps()
    weights = maps.weights[1, 1]
    lines = plot_lines(weights, maps.queries, maps.keys)
    alphas = np.asarray(lines.get_alpha())
    for segment, alpha in zip(lines.get_segments(), alphas):
        (_, y0), (_, y1) = segment
        assert alpha == pytest.approx(weights[int(-y0), int(-y1)], abs=1e-7)
    assert len(alphas) == weights.size
    sparse = plot_lines(weights, maps.queries, maps.keys, min_weight=0.2)
    assert len(sparse.get_alpha()) == int((weights > 0.2).sum())


def test_patterns_of_causal_padding_topk_and_entmax():
    maps, _ = _maps()
    causal = causal_pattern(len(TEXT))
    assert (support_pattern(maps.weights) == causal).all()  # softmax: all allowed keys
    assert causal_pattern(2, 4).tolist() == [[True, True, True, False], [True] * 4]
    net = _model()
    ids = torch.tensor([[ord(c) % 32 for c in TEXT]])
    keep = torch.ones_like(ids, dtype=torch.bool)
    keep[0, 3:6] = False
    padded = attention_maps(net, ids, list(TEXT), mask=keep)
    allowed = padding_pattern(keep[0].tolist(), causal=True)
    rows = keep[0].numpy()  # queries that are padding themselves are not inspected
    assert (support_pattern(padded.weights)[..., rows, :] == allowed[rows]).all()
    topk, _ = _maps(attn_sparse_topk=3)
    counts = support_pattern(topk.weights).sum(-1)
    assert counts.max() == 3 and (counts <= np.minimum(3, np.arange(1, len(TEXT) + 1))).all()
    entmax, _ = _maps(attn_use_entmax15=True)
    support = support_pattern(entmax.weights)
    assert not (support & ~causal).any() and (support.sum() < causal.sum() * 4)
    image = plot_pattern(support[0, 0], list(TEXT), list(TEXT))
    np.testing.assert_array_equal(image.get_array(), support[0, 0].astype(float))


def test_downsample_pools_rows_by_mean_and_keys_by_sum():
    w = np.arange(1, 17, dtype=float).reshape(1, 1, 4, 4)
    w /= w.sum(-1, keepdims=True)
    small = downsample(AttentionMaps(w, list("abcd"), list("abcd")), 2)
    rows = [(w[0, 0, 0] + w[0, 0, 1]) / 2, (w[0, 0, 2] + w[0, 0, 3]) / 2]
    expected = [[r[0] + r[1], r[2] + r[3]] for r in rows]
    np.testing.assert_allclose(small.weights[0, 0], expected)
    np.testing.assert_allclose(small.weights.sum(-1), 1.0)
    assert small.queries == ["a..b", "c..d"]


def test_missing_matplotlib_gives_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'x-attn\[viz\]'"):
        plot_map(np.eye(2), ["a", "b"], ["a", "b"])


class _Cells(HTMLParser):
    """Collects the numbers table and the head-view lines of a rendered page."""

    def __init__(self):
        super().__init__()
        self.rows, self.lines, self.canvases, self._cell = [], [], 0, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr":
            self.rows.append([])
        elif tag == "td":
            self._cell = ""
        elif tag == "line":
            self.lines.append((int(attrs["data-i"]), int(attrs["data-j"]), attrs["data-w"]))
        elif tag == "canvas":
            self.canvases += 1

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag == "td":
            self.rows[-1].append(float(self._cell))
            self._cell = None


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no headless Chromium found (Debian package 'chromium'; .ci/run installs it)")


def _browser(url: str, *flags: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        args = [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *flags,
            url,
        ]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_html_view_renders_the_maps_in_chromium(tmp_path):
    maps, _ = _maps()
    page = tmp_path / "view.html"
    to_html(maps, page, title="to be")
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//|@import|url\(""", text)
    for layer, head in [(0, 0), (1, 1)]:
        dom = _browser(f"{page.as_uri()}#layer={layer}&head={head}", "--dump-dom")
        assert 'data-rendered="yes"' in dom
        cells = _Cells()
        cells.feed(dom)
        table = np.array([r for r in cells.rows if r])
        np.testing.assert_allclose(table, maps.weights[layer, head], atol=5e-5)
        assert cells.canvases == maps.layers * maps.heads
        shown = {(i, j): float(w) for i, j, w in cells.lines}
        expected = {
            (i, j): w for (i, j), w in np.ndenumerate(maps.weights[layer, head]) if round(w, 4) > 0
        }
        assert shown.keys() == expected.keys()
        assert all(abs(shown[k] - expected[k]) <= 5e-5 for k in shown)
    shot = tmp_path / "shot.png"
    _browser(page.as_uri(), f"--screenshot={shot}", "--window-size=1000,900")
    colours = np.unique(np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, lines and heatmaps were painted, not a blank page


def test_html_downsamples_long_sequences(tmp_path):
    w = np.full((1, 1, 100, 100), 0.01)
    page = to_html(
        AttentionMaps(w, [str(i) for i in range(100)], [str(i) for i in range(100)]), max_tokens=10
    )
    assert "pooled into 10 x 10 groups" in page
    assert Path(tmp_path).exists()
