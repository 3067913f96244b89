"""One rank of tests/test_train_distributed.py's two-process run (started by torch.multiprocessing).

Each rank trains the tiny float64 model with DDP and with FSDP2 through the same ``train`` loop
the command line uses, under a fake clock (rank 1's runs 100x faster, so only a broadcast stop
decision keeps the ranks in step), then runs the command line itself with torchrun's
environment variables. Results go to ``out`` as files the test reads.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import torch

from x_attn.data.text import TextData, split_text
from x_attn.train import loop
from x_attn.train.distributed import Parallel, unsharded, wrap
from x_attn.train.loop import train_step
from x_attn.train.recipes import RECIPES, Recipe, build_model

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind.\n" * 12
RECIPE = RECIPES["default"].replace(
    dim=16, depth=2, heads=2, context=16, batch=4, steps=3, time_budget=None, eval_every=2, warmup=1
)
BUDGET = RECIPE.replace(steps=50, time_budget=0.35, eval_every=1000)  # 7 steps of rank 0
TICK = 0.05  # fake seconds between clock readings: a step (start to end) lasts one tick
TINY_CLI = ["--dim", "16", "--depth", "1", "--heads", "2", "--context", "16", "--batch", "4"]


def data() -> TextData:
    return TextData.from_splits(*split_text(TEXT))


def fresh_model(recipe: Recipe) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(recipe, len(data().vocab)).double()


def fake_clock(tick: float) -> SimpleNamespace:
    """Stands in for the ``time`` module of x_attn.train.loop: each reading advances ``tick``."""
    now = [0.0]

    def perf_counter() -> float:
        now[0] += tick
        return now[0]

    return SimpleNamespace(perf_counter=perf_counter)


@contextlib.contextmanager
def instrumented_loop(clock_tick: float) -> Iterator[list[torch.Tensor]]:
    """The training loop on a fake clock, recording the rows each step trains on."""
    seen: list[torch.Tensor] = []

    def recording_step(model, optimizer, windows, lr, grad_clip):
        seen.append(windows.clone())
        return train_step(model, optimizer, windows, lr, grad_clip)

    saved = loop.time, loop.train_step
    loop.time, loop.train_step = fake_clock(clock_tick), recording_step
    try:
        yield seen
    finally:
        loop.time, loop.train_step = saved


def train_once(
    recipe: Recipe, parallel: Parallel | None = None, clock_tick: float = TICK
) -> tuple[dict, torch.nn.Module]:
    """Train a fresh tiny model wrapped for ``parallel``: (its full parameters, history and
    training rows, the wrapped model)."""
    parallel = parallel or Parallel()
    model = fresh_model(recipe)
    wrapped = wrap(model, parallel, torch.device("cpu"))
    with instrumented_loop(clock_tick) as seen:
        history = loop.train(
            wrapped,
            data(),
            recipe,
            device=torch.device("cpu"),
            seed=1,
            progress=False,
            parallel=parallel,
        )
    params = {  # FSDP2 holds DTensor shards: gather each (every rank, in the same order)
        name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for name, p in model.named_parameters()
    }
    result = {"params": params, "steps": history.steps, "train": history.train, "val": history.val}
    result["windows"] = seen
    three = data().val_windows(recipe.context, 3 * recipe.context)  # in chunks of 2 and 1 row
    result["val_short_chunk"] = loop.evaluate(wrapped, three, torch.device("cpu"), 2, parallel)
    return result, wrapped


def run_rank(rank: int, world: int, ports: tuple[int, int], out: str) -> None:
    out_dir = Path(out)
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]))
    timeout = datetime.timedelta(seconds=120)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world, timeout=timeout)
    try:
        for kind in ("ddp", "fsdp"):
            parallel = Parallel(rank, world, fsdp=kind == "fsdp", enabled=True)
            result, wrapped = train_once(RECIPE, parallel)
            plain = unsharded(wrapped, parallel)  # what the command line saves
            if plain is not None:
                plain.save(out_dir / f"{kind}-checkpoint")
            budget, _ = train_once(BUDGET, parallel, TICK * (100 if rank else 1))
            result["budget_steps"] = budget["steps"]
            result["budget_params"] = budget["params"]
            torch.save(result, out_dir / f"{kind}-rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()
    run_cli(rank, world, ports[1], out_dir)


def run_cli(rank: int, world: int, port: int, out_dir: Path) -> None:
    """``torchrun --nproc_per_node=2 -m x_attn.train --fsdp ...`` as torchrun would run it."""
    from x_attn.train.cli import main

    corpus = out_dir / "tiny.txt"  # written by the test before the ranks start
    env = dict(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=world, MASTER_PORT=port)
    os.environ.update({k: str(v) for k, v in env.items()})
    argv = ["--data", str(corpus), "--out", str(out_dir / "cli"), "--fsdp", *TINY_CLI]
    argv += ["--steps", "3", "--eval-every", "2", "--length", "8", "--num-samples", "1"]
    with (
        open(out_dir / f"cli-rank{rank}.out", "w") as stdout,
        open(out_dir / f"cli-rank{rank}.err", "w") as stderr,
        contextlib.redirect_stdout(stdout),
        contextlib.redirect_stderr(stderr),
    ):
        code = main(argv)
    (out_dir / f"cli-rank{rank}.code").write_text(str(code))
