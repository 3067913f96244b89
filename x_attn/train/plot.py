"""Loss-curve figure of a training run (matplotlib is optional)."""

from __future__ import annotations

import math
from pathlib import Path

from x_attn.train.loop import History

__all__ = ["plot_history"]


def plot_history(history: History, path: str | Path, title: str = "") -> Path:
    """Training loss (running mean) and validation loss per step, in nats and bits per char."""
    from x_attn.viz.backend import pyplot

    plt = pyplot()
    steps = [s for s, _ in history.train]
    losses = [v for _, v in history.train]
    width = max(1, len(losses) // 50)
    smooth = [
        sum(losses[max(0, i - width + 1) : i + 1]) / min(width, i + 1) for i in range(len(losses))
    ]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    ax.plot(steps, smooth, label=f"training (mean of {width} steps)", color="#4c72b0")
    if history.val:
        ax.plot(*zip(*history.val), "o-", label="validation (held-out plays)", color="#dd8452")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per character)")
    ax.set_title(title or "character-level loss")
    ax.grid(alpha=0.3)
    ax.legend()
    bits = ax.secondary_yaxis(
        "right", functions=(lambda x: x / math.log(2), lambda x: x * math.log(2))
    )
    bits.set_ylabel("bits per character")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
