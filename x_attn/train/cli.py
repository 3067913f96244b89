"""Command line of the main job: train a character-level GPT on Shakespeare, or sample from one.

Run ``python -m x_attn.train`` (or ``x-attn-train``, or ``python examples/train_shakespeare.py``)
with no arguments to train the default recipe on the embedded corpus. Bad arguments end with a
one-line ``error:`` message and exit status 2, never a traceback. Under
``torchrun --nproc_per_node=N -m x_attn.train`` it trains with DDP (FSDP2 with ``--fsdp``) and
only rank 0 prints; see :mod:`x_attn.train.distributed`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from x_attn.catalog import CATALOG
from x_attn.train.distributed import launched, main_process
from x_attn.train.recipes import RECIPES

__all__ = ["main", "parser"]

PROG = "x-attn-train"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + error
        self.exit(2, f"{PROG}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--preset",
        choices=sorted(RECIPES),
        default="default",
        help="training recipe (default: %(default)s)",
    )
    p.add_argument(
        "--data",
        help="train on this UTF-8 text file instead of the plays "
        "(its last 10%% is the validation split)",
    )
    p.add_argument(
        "--attention",
        default="mha",
        metavar="NAME",
        help="attention mechanism from x_attn.catalog (default: mha); --list-attention shows them",
    )
    p.add_argument("--list-attention", action="store_true", help="list mechanisms and exit")
    for name in ("dim", "depth", "heads", "context", "batch", "steps", "eval-every"):
        p.add_argument(f"--{name}", type=_positive_int, help="override the preset")
    p.add_argument("--lr", type=_positive_float, help="peak learning rate (override)")
    p.add_argument(
        "--time-budget",
        type=_positive_float,
        metavar="SECONDS",
        help="stop after this much training time; the schedule follows the clock",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads")
    p.add_argument("--out", help="output folder (default: runs/<preset>)")
    p.add_argument(
        "--fsdp",
        action="store_true",
        help="under torchrun: shard parameters, gradients and optimiser state with FSDP2 "
        "instead of replicating them with DDP (--batch stays the global batch)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--sample",
        metavar="CHECKPOINT",
        help="do not train: load this checkpoint folder and generate",
    )
    p.add_argument("--prompt", help="text to continue (default: a newline)")
    p.add_argument("--length", type=_positive_int, default=500, help="characters to generate")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=_positive_int, help="sample among the k likeliest")
    p.add_argument(
        "--num-samples", type=int, default=2, help="samples printed after training (default: 2)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.list_attention:
            return _list_attention()
        if args.sample:
            if launched():
                raise ValueError("--sample generates in one process; run it without torchrun")
            return _sample(args)
        return _train(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        if main_process():  # under torchrun every rank fails alike
            print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this PyTorch build sees no CUDA device; use cpu")
    return torch.device(name)


def _list_attention() -> int:
    for entry in CATALOG:
        status = entry.unavailable_reason or "available"
        print(f"{entry.name:20s} {entry.summary} [{status}]")
    return 0


def _train(args: argparse.Namespace) -> int:
    from x_attn.train.run import run_training

    started = time.perf_counter()
    result = run_training(args, _device(args.device))
    if main_process():
        print(f"total time {time.perf_counter() - started:.0f} s")
    return 0 if result else 1


def _sample(args: argparse.Namespace) -> int:
    from x_attn.checkpoint import load, load_metadata
    from x_attn.data.text import CharVocab
    from x_attn.train.sampling import default_prompt, generate_text

    device = _device(args.device)
    model = load(args.sample, device=device)
    meta = load_metadata(args.sample)
    if "vocab" not in meta:
        raise ValueError(f"--sample: {args.sample} has no character vocabulary in its metadata")
    vocab = CharVocab(meta["vocab"])
    prompt = args.prompt if args.prompt is not None else default_prompt(vocab)
    text = generate_text(model, vocab, prompt, args.length, args.temperature, args.top_k, args.seed)
    print(prompt + text)
    return 0
