"""Compare attention mechanisms on one small character-level GPT (see docs/comparison.md).

Every variant of x_attn.catalog, plus the nanoGPT recipe, is trained with the same model
shape, data, token budget and seeds; the script prints a markdown table and writes it with a
PNG chart. Mechanisms that are not available or not causal are listed with the reason.

Run: python examples/compare_attention.py            (the recorded study)
     python examples/compare_attention.py --quick    (a smoke run in about a minute)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from x_attn.train.compare import Study, plot_rows, run_study, table_markdown
from x_attn.train.recipes import RECIPES
from x_attn.train.run import load_data

# the recorded study: sized to finish in well under an hour on a busy 2-core CPU
FULL = dict(
    dim=64,
    depth=2,
    heads=4,
    steps=300,
    context=64,
    batch=16,
    eval_every=10**9,
    final_eval_tokens=32768,
)
QUICK = dict(
    dim=32,
    depth=2,
    heads=2,
    steps=20,
    context=32,
    batch=8,
    eval_every=10**9,
    warmup=5,
    final_eval_tokens=2048,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model and budget (smoke run)")
    p.add_argument("--steps", type=int, help="override the token budget (steps)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--variants", nargs="+", help="only these variants")
    p.add_argument("--data", help="a UTF-8 text file instead of the plays")
    p.add_argument("--out", default="runs/compare", help="folder for table.md and chart.png")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    args = p.parse_args(argv)
    if len(args.seeds) < 2:
        p.error("--seeds: give at least two seeds, so that the spread can be reported")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {**(QUICK if args.quick else FULL)}
    if args.steps:
        settings["steps"] = args.steps
    recipe = RECIPES["default"].replace(**settings)
    try:
        data, source = load_data(args.data)
        data.check_context(recipe.context)
        started, load = time.perf_counter(), os.getloadavg()[0]
        rows = run_study(Study(recipe, tuple(args.seeds), args.device), data, args.variants)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"compare_attention: error: {error}", file=sys.stderr)
        return 2
    minutes = (time.perf_counter() - started) / 60
    tokens = recipe.steps * recipe.batch * recipe.context
    header = (
        f"Data: {source}. Model: dim {recipe.dim}, depth {recipe.depth}, heads {recipe.heads}, "
        f"context {recipe.context}; {recipe.steps} steps x batch {recipe.batch} = {tokens:,} "
        f"training tokens per run; seeds {args.seeds}; device {args.device}, "
        f"{torch.get_num_threads()} threads. Took {minutes:.1f} min; load average "
        f"{load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.\n\n"
    )
    table = header + table_markdown(rows)
    print("\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table, encoding="utf-8")
    try:
        print(f"chart: {plot_rows(rows, out / 'chart.png', 'same model, data, budget, seeds')}")
    except ImportError as error:
        print(f"chart skipped: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
