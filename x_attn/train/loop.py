"""The training loop: AdamW, warmup + cosine schedule, periodic validation, tqdm progress.

The schedule runs on a progress fraction: steps done / ``steps``, or training seconds /
``time_budget`` when a wall-clock budget is given (whichever is further along), so a run cut by
the budget still ends at the minimum learning rate. Validation time is not counted in the budget.

With a :class:`~x_attn.train.distributed.Parallel` (several processes), every rank runs this
same loop and the same :func:`train_step` on its shard of the global batch; rank 0's progress
fraction is broadcast, so all ranks share the learning rate and stop at the same step.

Shape legend: b batch, n context, v vocabulary.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from x_attn.data.text import TextData
from x_attn.train.distributed import Parallel
from x_attn.train.recipes import Recipe

__all__ = ["History", "evaluate", "make_optimizer", "train", "train_step"]

LN2 = math.log(2)


@dataclass
class History:
    """What a run measured: per-step training loss and periodic validation loss."""

    train: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    val: list[tuple[int, float]] = field(default_factory=list)  # (step, nats/char)
    steps: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    stopped_by_time: bool = False

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.train_seconds, 1e-9)


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on norms, biases or embeddings' rows)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "emb" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "emb" not in n)]
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas)


def learning_rate(recipe: Recipe, step: int, progress: float) -> float:
    """Linear warmup over ``recipe.warmup`` steps, then cosine from lr to min_lr."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return recipe.min_lr + (recipe.lr - recipe.min_lr) * cosine


def next_token_loss(model: nn.Module, windows: Tensor) -> Tensor:
    """Mean cross-entropy (nats) of predicting windows[:, 1:] from windows[:, :-1]."""
    logits = model(windows[:, :-1])  # (b, n, v)
    return F.cross_entropy(rearrange(logits, "b n v -> b v n"), windows[:, 1:])


@torch.no_grad()
def evaluate(
    model: nn.Module,
    windows: Tensor,
    device: torch.device,
    batch: int = 64,
    parallel: Parallel | None = None,
) -> float:
    """Mean next-character loss in nats over the validation ``windows`` (w, n + 1).

    With ``parallel``, every rank must call it: each takes its rows of every chunk of ``batch``
    windows (the same number of forwards on every rank, as FSDP needs) and the sums are added.
    """
    parallel = parallel or Parallel()
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for chunk in windows.split(batch):
        rows = parallel.shard(chunk)
        weight = rows.numel()
        if not weight:  # fewer windows than ranks: a forward all the same, counted as nothing
            rows = chunk[:1]
        total += next_token_loss(model, rows.to(device)).item() * weight
        count += weight
    model.train(was_training)
    total, count = parallel.sum(total, count)
    return total / count


def train(
    model: nn.Module,
    data: TextData,
    recipe: Recipe,
    *,
    device: torch.device,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    parallel: Parallel | None = None,
) -> History:
    """Train ``model`` in place on ``data`` following ``recipe``; returns the History.

    Training stops after ``recipe.steps`` steps or ``recipe.time_budget`` seconds of training,
    whichever comes first. ``parallel``: this rank of a multi-process run (``model`` wrapped by
    :func:`x_attn.train.distributed.wrap`); ``recipe.batch`` is then the global batch, and only
    rank 0 shows progress and logs.
    """
    time_budget = recipe.time_budget
    if recipe.steps is None and time_budget is None:
        raise ValueError("train: give a number of steps, a time budget, or both")
    parallel = parallel or Parallel()
    if recipe.batch % parallel.world:
        raise ValueError(
            f"train: the global batch {recipe.batch} must be divisible by the world size "
            f"{parallel.world}"
        )
    generator = torch.Generator().manual_seed(seed)
    val_windows = data.val_windows(recipe.context, recipe.eval_tokens)
    optimizer = make_optimizer(model, recipe)
    history = History()
    bar = _progress_bar(recipe, time_budget, progress and parallel.is_main)
    model.train()
    while True:
        fraction = parallel.broadcast(_fraction(history, recipe, time_budget))
        if fraction >= 1.0:
            break
        start = time.perf_counter()
        lr = learning_rate(recipe, history.steps, fraction)
        windows = parallel.shard(data.batch(recipe.batch, recipe.context, generator))
        loss = train_step(model, optimizer, windows.to(device), lr, recipe.grad_clip)
        loss = parallel.sum(loss.item() / parallel.world)[0]  # the global batch's mean
        elapsed = time.perf_counter() - start
        history.steps += 1
        history.tokens += recipe.batch * recipe.context
        history.train_seconds += elapsed
        history.train.append((history.steps, loss))
        _advance(bar, history, elapsed, loss)
        if history.steps % recipe.eval_every == 0:
            val = evaluate(model, val_windows, device, parallel=parallel)
            history.val.append((history.steps, val))
            if parallel.is_main:
                _report(bar, log, history, val)
    if bar is not None:
        bar.close()
    history.stopped_by_time = recipe.steps is None or history.steps < recipe.steps
    return history


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, windows: Tensor, lr: float, grad_clip: float
) -> Tensor:
    """One optimiser step on ``windows`` (b, n + 1) at learning rate ``lr``; the loss (detached).

    The same function runs in one process and on every rank of a DDP / FSDP2 run (where the
    wrapper averages the gradients over the ranks during ``backward``).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = next_token_loss(model, windows)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.detach()


def _fraction(history: History, recipe: Recipe, time_budget: float | None) -> float:
    parts = []
    if recipe.steps is not None:
        parts.append(history.steps / recipe.steps)
    if time_budget is not None:
        parts.append(history.train_seconds / time_budget)
    return max(parts)


def _progress_bar(recipe: Recipe, time_budget: float | None, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    if recipe.steps is not None and time_budget is None:
        return tqdm(total=recipe.steps, unit="step", dynamic_ncols=True)
    return tqdm(total=round(time_budget, 1), unit="s", dynamic_ncols=True)


def _advance(bar, history: History, elapsed: float, loss: float) -> None:
    if bar is None:
        return
    bar.update(1 if bar.unit == "step" else round(elapsed, 3))
    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{history.tokens_per_second:,.0f}", refresh=False)


def _report(bar, log: Callable[[str], None], history: History, val: float) -> None:
    line = (
        f"step {history.steps}: val {val:.4f} nats/char ({val / LN2:.3f} bits/char), "
        f"{history.tokens_per_second:,.0f} tokens/s"
    )
    if bar is not None:
        bar.write(line)
    else:
        log(line)
