"""One training run from parsed command-line arguments: data, model, loop, outputs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from pathlib import Path

import torch

from x_attn.data.text import TextData, load_text_file, split_text
from x_attn.train.distributed import (
    Parallel,
    check_launch,
    process_group,
    rank_device,
    unsharded,
    wrap,
)
from x_attn.train.loop import History, evaluate, train
from x_attn.train.recipes import RECIPES, Recipe, build_model
from x_attn.train.sampling import default_prompt, generate_text

__all__ = ["load_data", "recipe_from_args", "run_training"]

_OVERRIDES = ("dim", "depth", "heads", "context", "batch", "steps", "lr", "eval_every")


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The preset with the command line's overrides.

    ``--time-budget`` alone trains for that long (no step limit); ``--steps`` alone trains that
    many steps (no time limit); both: whichever comes first.
    """
    recipe = RECIPES[args.preset]
    changes = {k: getattr(args, k) for k in _OVERRIDES if getattr(args, k, None) is not None}
    if args.time_budget is not None or args.steps is not None:
        changes["time_budget"] = args.time_budget
        changes["steps"] = args.steps
    recipe = recipe.replace(**changes)
    if recipe.dim % recipe.heads:
        raise ValueError(
            f"--dim {recipe.dim} is not divisible by --heads {recipe.heads}; choose a width "
            "that is a multiple of the number of heads"
        )
    return recipe


def load_data(path: str | None) -> tuple[TextData, str]:
    """(encoded splits, a description of the source)."""
    if path is None:
        from x_attn.data.shakespeare import shakespeare

        corpus = shakespeare()
        return TextData.from_splits(corpus.train, corpus.val), corpus.source
    train_text, val_text = split_text(load_text_file(path))
    return TextData.from_splits(train_text, val_text), f"{path} (last 10% held out)"


def run_training(args: argparse.Namespace, device: torch.device) -> bool:
    """Train, evaluate, save the checkpoint, plot and sample; True when all went through.

    Under torchrun every rank trains (DDP, or FSDP2 with ``--fsdp``; see
    :mod:`x_attn.train.distributed`) and rank 0 alone prints and writes the outputs.
    """
    recipe = recipe_from_args(args)
    check_launch(fsdp=args.fsdp, batch=recipe.batch)
    device = rank_device(device)
    data, source = load_data(args.data)
    data.check_context(recipe.context)
    with process_group(device, fsdp=args.fsdp) as parallel:
        return _train_on_rank(args, recipe, data, source, device, parallel)


def _train_on_rank(
    args: argparse.Namespace,
    recipe: Recipe,
    data: TextData,
    source: str,
    device: torch.device,
    parallel: Parallel,
) -> bool:
    torch.manual_seed(args.seed)
    model = build_model(recipe, len(data.vocab), args.attention).to(device)
    params = sum(p.numel() for p in model.parameters())
    if parallel.is_main:
        print(f"data: {source}; {len(data.train):,} training / {len(data.val):,} validation chars")
        print(
            f"model: {args.preset} recipe, attention {args.attention}, {params:,} parameters, "
            f"device {device}, {torch.get_num_threads()} threads{_processes(parallel)}; "
            f"load average {os.getloadavg()[0]:.2f}"
        )
    wrapped = wrap(model, parallel, device)
    history = train(
        wrapped,
        data,
        recipe,
        device=device,
        seed=args.seed,
        progress=not args.no_progress,
        parallel=parallel,
    )
    model = unsharded(wrapped, parallel)
    if model is None:  # not rank 0: its part is done
        return True
    val = evaluate(model, data.val_windows(recipe.context, recipe.final_eval_tokens), device)
    summary = _summary(args, recipe, history, val, params, parallel)
    print(
        f"validation loss {val:.4f} nats/char = {val / math.log(2):.3f} bits/char after "
        f"{history.steps} steps ({history.train_seconds:.0f} s of training, "
        f"{history.tokens_per_second:,.0f} tokens/s"
        + (", stopped by the time budget)" if history.stopped_by_time else ")")
    )
    out = Path(args.out or Path("runs") / args.preset)
    _write_outputs(model, data, history, summary, out)
    _print_samples(model, data, args)
    return True


def _processes(parallel: Parallel) -> str:
    if not parallel.enabled:
        return ""
    return f" x {parallel.world} processes ({parallel.kind.upper()}, global batch split evenly)"


def _summary(
    args, recipe: Recipe, history: History, val: float, params: int, parallel: Parallel
) -> dict:
    return {
        "preset": args.preset,
        "attention": args.attention,
        "seed": args.seed,
        "recipe": dataclasses.asdict(recipe),
        "parameters": params,
        "val_nats_per_char": val,
        "val_bits_per_char": val / math.log(2),
        "steps": history.steps,
        "tokens": history.tokens,
        "train_seconds": history.train_seconds,
        "tokens_per_second": history.tokens_per_second,
        "time_budget": recipe.time_budget,
        "stopped_by_time": history.stopped_by_time,
        "load_average": os.getloadavg()[0],
        "processes": parallel.world,
        "parallel": parallel.kind,
        "val_curve": history.val,
    }


def _write_outputs(model, data: TextData, history: History, summary: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "checkpoint", metadata={"vocab": data.vocab.chars, "run": summary})
    (out / "history.json").write_text(
        json.dumps({**summary, "train_curve": history.train}) + "\n", encoding="utf-8"
    )
    print(f"checkpoint: {out / 'checkpoint'} (sample with --sample {out / 'checkpoint'})")
    try:
        from x_attn.train.plot import plot_history

        title = f"{summary['preset']} recipe, attention {summary['attention']}"
        print(f"loss curve: {plot_history(history, out / 'loss.png', title)}")
    except ImportError as error:
        print(f"loss curve skipped: {error}")


def _print_samples(model, data: TextData, args: argparse.Namespace) -> None:
    prompt = args.prompt if args.prompt is not None else default_prompt(data.vocab)
    for index in range(args.num_samples):
        text = generate_text(
            model, data.vocab, prompt, args.length, args.temperature, args.top_k, args.seed + index
        )
        print(f"\n--- sample {index + 1} ---\n{prompt}{text}")
