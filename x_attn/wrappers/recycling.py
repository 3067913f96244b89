"""Recycling (Jumper et al., "Highly accurate protein structure prediction with AlphaFold",
Nature 2021; x-transformers' ``recycling``): the model runs several times on the same input, each
run adding a learned projection of the previous run's output embeddings to its input embeddings::

    e_1 = f(h)        e_k = f(h + R e_{k-1})        logits = head(e_K)

``R`` is a learned linear map (``recycled_proj``). In training the number of runs K is drawn
uniformly from 1..``train_max_recycle_steps`` per call and the runs before the last take no
gradient (AlphaFold's stop-gradient between recycling iterations); in eval K is
``recycle_steps=`` or, when not given, ``train_max_recycle_steps`` (x-transformers requires
it). Each run is the model itself, so causality and padding are those of the model; a KV cache
or memories would hold only one run, so they are refused (generation runs without a cache).

Shape legend: b batch, n sequence, d model dim, e embedding dim.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

REASON = "recycling runs the whole sequence several times, feeding each run's outputs back"


class RecycledProjection(nn.Linear):
    """``R``: output embeddings (b, n, d) -> input embeddings (b, n, e), no bias.

    Declares the model uncacheable, so generation runs without a KV cache."""

    uncacheable_reason = REASON

    def __init__(self, dim: int, emb_dim: int) -> None:
        super().__init__(dim, emb_dim, bias=False)


def check_recycling(on: bool, max_steps: int, owner: str) -> None:
    if not isinstance(on, bool):
        raise TypeError(f"{owner}: 'recycling' must be True or False, got {on!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(
            f"{owner}: 'train_max_recycle_steps' must be an int >= 1, got {max_steps!r}"
        )


def recycle_count(given: Any, training: bool, max_steps: int) -> int:
    """Runs of this call: ``recycle_steps`` if given, else a uniform draw from 1..max_steps in
    training and max_steps in eval (x-transformers requires it in eval)."""
    if given is None:
        return int(torch.randint(1, max_steps + 1, ()).item()) if training else max_steps
    if isinstance(given, bool) or not isinstance(given, int) or given < 1:
        raise ValueError(f"TransformerWrapper: 'recycle_steps' must be an int >= 1, got {given!r}")
    return given


def check_single_run_inputs(owner: str, **inputs: Any) -> None:
    """A cache, memories or prepended embeddings would see one run only: refused."""
    given = [name for name, value in inputs.items() if value is not None and value is not False]
    if given:
        raise ValueError(f"{owner}: {', '.join(given)} cannot be used with recycling ({REASON})")


def add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """``a + b`` where either may be None."""
    if a is None or b is None:
        return b if a is None else a
    return a + b
