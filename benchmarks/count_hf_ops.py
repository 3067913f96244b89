"""Load-independent cost of the models of bench_hf.py: calls per forward and per decode step.

For the x_attn model and Hugging Face's sdpa model (built as ``bench_hf.py`` builds them),
counts, for one forward of a (1, seq) block and per cached decode step (the difference between
decoding 16 and 8 tokens, divided by 8):

* torch calls: torch functions and tensor methods/attributes called from Python
  (``TorchFunctionMode``);
* aten ops: top-level ATen operators the profiler records (an op called inside another one is
  not counted again);
* Python calls: function calls cProfile records (Python and builtin functions).

Wall-clock timings on a shared machine move with the load; these counts do not.

Run: python benchmarks/count_hf_ops.py [--shape tiny]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_hf  # noqa: E402
from common import markdown_table  # noqa: E402


class _TorchCalls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def torch_calls(fn: Callable[[], object]) -> int:
    with _TorchCalls() as mode:
        fn()
    return mode.count


def aten_ops(fn: Callable[[], object]) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    top = [e for e in prof.events() if e.name.startswith("aten::")]
    return sum(1 for e in top if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))


def python_calls(fn: Callable[[], object]) -> int:
    profile = cProfile.Profile()
    profile.enable()
    fn()
    profile.disable()
    return pstats.Stats(profile).total_calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="tiny", choices=list(bench_hf.SHAPES))
    parser.add_argument("--seq", type=int, default=256)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    models = bench_hf.candidates(bench_hf.SHAPES[args.shape])
    vocab = bench_hf.SHAPES[args.shape]["vocab_size"]
    x = torch.randint(1, vocab, (1, args.seq), generator=torch.Generator().manual_seed(1))
    prompt = x[:, :32]
    rows = []
    for key in ("HF sdpa", "x_attn"):
        model, decode = models[key]
        forward = bench_hf.forward_fn(model, x)
        forward(), decode(prompt, 2)  # warm up (lazy tables, caches)
        row = [key]
        for count in (torch_calls, aten_ops, python_calls):
            step = (
                count(lambda d=decode: d(prompt, 16)) - count(lambda d=decode: d(prompt, 8))
            ) / 8
            row += [str(count(forward)), f"{step:.0f}"]
        rows.append(row)
    headers = ["model", "torch calls / forward", "/ decode step", "aten ops / forward"]
    headers += ["/ decode step", "Python calls / forward", "/ decode step"]
    print(f"{args.shape} Llama, forward of 1 x {args.seq} tokens, decode after 32 tokens\n")
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
