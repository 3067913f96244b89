"""The comparison study: one small GPT, one data set, one token budget, one seed set, and
every attention mechanism of :mod:`x_attn.catalog` (plus the nanoGPT recipe) trained in turn.

Each row reports validation loss (mean and spread over the seeds), training tokens/s, the
memory of a training step, parameters and KV-cache bytes per token. Mechanisms that are not
available, or not causal, get a row that says so, never numbers.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from x_attn.catalog import CATALOG
from x_attn.data.text import TextData
from x_attn.train.loop import evaluate, train
from x_attn.train.measure import cache_bytes_per_token, step_memory_bytes
from x_attn.train.recipes import RECIPES, Recipe, build_model

__all__ = ["Row", "Study", "run_study", "table_markdown", "variants"]

NANOGPT = "nanogpt-recipe"


@dataclass
class Row:
    """One variant's results (``reason`` set and everything else empty when it did not run)."""

    name: str
    summary: str
    reason: str | None = None
    losses: list[float] = field(default_factory=list)
    tokens_per_second: list[float] = field(default_factory=list)
    step_memory: int = 0
    parameters: int = 0
    cache_per_token: float = 0.0
    cache_fixed: int = 0
    cacheable: bool = True  # False: the model decodes without a KV cache (LSH, Linformer)

    @property
    def loss(self) -> float:
        return statistics.fmean(self.losses)

    @property
    def spread(self) -> float:
        """Half the range of the per-seed losses."""
        return (max(self.losses) - min(self.losses)) / 2


@dataclass(frozen=True)
class Study:
    recipe: Recipe
    seeds: tuple[int, ...] = (0, 1)
    device: str = "cpu"


def variants(names: list[str] | None = None) -> list[tuple[str, str, str | None]]:
    """(name, summary, reason it cannot run or None) for the catalog and the nanoGPT recipe."""
    rows = [(m.name, m.summary, m.unavailable_reason) for m in CATALOG]
    rows.append((NANOGPT, "nanoGPT: learned positions, LayerNorm, GELU MLP, MHA", None))
    if names is None:
        return rows
    known = {r[0]: r for r in rows}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {', '.join(known)}")
    return [known[n] for n in names]


def run_study(study: Study, data: TextData, names: list[str] | None = None, log=print) -> list[Row]:
    """Train every runnable variant once per seed; rows in catalog order."""
    rows = []
    for name, summary, reason in variants(names):
        row = Row(name, summary, reason)
        if reason is None:
            _run_variant(row, study, data, log)
        else:
            log(f"{name}: skipped ({reason})")
        rows.append(row)
    return rows


def _model(name: str, recipe: Recipe, vocab: int) -> torch.nn.Module:
    if name == NANOGPT:
        nano = RECIPES["nanogpt"]
        shaped = recipe.replace(layer_flags=nano.layer_flags, wrapper_flags=nano.wrapper_flags)
        return build_model(shaped, vocab, "mha")
    return build_model(recipe, vocab, name)


def _run_variant(row: Row, study: Study, data: TextData, log) -> None:
    device = torch.device(study.device)
    recipe = study.recipe
    windows = data.val_windows(recipe.context, recipe.final_eval_tokens)
    for seed in study.seeds:
        torch.manual_seed(seed)
        model = _model(row.name, recipe, len(data.vocab)).to(device)
        history = train(
            model, data, recipe, device=device, seed=seed, progress=False, log=lambda _: None
        )
        row.losses.append(evaluate(model, windows, device))
        row.tokens_per_second.append(history.tokens_per_second)
        log(
            f"{row.name} seed {seed}: val {row.losses[-1]:.4f} nats/char, "
            f"{history.tokens_per_second:,.0f} tokens/s (load {os.getloadavg()[0]:.1f})"
        )
    row.parameters = sum(p.numel() for p in model.parameters())
    row.step_memory = step_memory_bytes(
        model, data.batch(recipe.batch, recipe.context, torch.Generator().manual_seed(0)).to(device)
    )
    row.cacheable = model.attn_layers.uncacheable_reason is None
    if row.cacheable:
        row.cache_per_token, row.cache_fixed = cache_bytes_per_token(model)


def table_markdown(rows: list[Row]) -> str:
    """The study as a markdown table (loss in nats/char; bits/char in brackets)."""
    lines = [
        "| variant | val loss, nats/char (bits) | ± | tokens/s | step memory, MB | "
        "parameters | KV cache, bytes/token |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.reason is not None:
            lines.append(f"| {r.name} | {r.reason} | | | | | |")
            continue
        fixed = f" + {r.cache_fixed:,} fixed" if r.cache_fixed else ""
        cache = f"{r.cache_per_token:,.0f}{fixed}" if r.cacheable else "none (no KV cache)"
        lines.append(
            f"| {r.name} | {r.loss:.4f} ({r.loss / math.log(2):.3f}) | {r.spread:.4f} | "
            f"{statistics.fmean(r.tokens_per_second):,.0f} | {r.step_memory / 1e6:.1f} | "
            f"{r.parameters:,} | {cache} |"
        )
    return "\n".join(lines) + "\n"


def plot_rows(rows: list[Row], path: str | Path, title: str = "") -> Path:
    """Bar chart: validation loss with its spread, and tokens/s, per variant that ran."""
    from x_attn.viz.backend import pyplot

    plt = pyplot()
    ran = [r for r in rows if r.reason is None]
    names = [r.name for r in ran]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.45 * len(ran) + 1.8), sharey=True)
    y = range(len(ran))
    left.barh(y, [r.loss for r in ran], xerr=[r.spread for r in ran], color="#4c72b0")
    low = min(r.loss - r.spread for r in ran)
    left.set_xlim(low - 0.05, max(r.loss + r.spread for r in ran) + 0.03)
    left.set_xlabel("validation loss, nats/char (lower is better)")
    left.set_yticks(list(y), names)
    left.invert_yaxis()
    right.barh(y, [statistics.fmean(r.tokens_per_second) for r in ran], color="#55a868")
    right.set_xlabel("training tokens/s (higher is better)")
    for ax in (left, right):
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
