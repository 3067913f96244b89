"""Memory and time of one training step of a Decoder LM, plain vs ``reversible=True``.

Papers: RevNet (Gomez et al., arXiv 1707.04585), Reformer (Kitaev et al., arXiv 2001.04451).

Each configuration runs in a fresh process (so peak statistics start clean) and reports:
- saved activations: bytes of the distinct tensor storages that the forward pass saves for
  backward (``torch.autograd.graph.saved_tensors_hooks``), parameters excluded;
- peak memory of forward + backward above the memory held before the step: on CUDA
  ``torch.cuda.max_memory_allocated``, on CPU the peak RSS (``ru_maxrss``) minus the RSS just
  before the step (Linux; after a tiny warm-up step that pages in the kernels). Parameter
  gradients (allocated by the step) are included in both;
- median wall time of ``--repeats`` forward + backward steps (after one untimed step).

Run (defaults: dim 256, depth 12, heads 4, seq 512, batch 2, vocab 256):
    python benchmarks/bench_reversible_model.py
    python benchmarks/bench_reversible_model.py --depth 6 --seq 256  # smaller

Shape legend: b batch, n sequence, d model dim, v vocabulary.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import saved_tensors_hooks

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))  # benchmarks/common.py
sys.path.insert(0, str(_HERE.parent))  # the x_attn of this working tree, even if not installed
from common import (  # noqa: E402
    add_shape_args,
    default_device,
    machine_lines,
    markdown_table,
    median,
    synchronize,
)

MIB = 2.0**20


class SavedActivations:
    """Counts the distinct non-parameter storages packed for backward (bytes)."""

    def __init__(self, model: nn.Module) -> None:
        self.param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: set[int] = set()
        self.bytes = 0

    def pack(self, tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.param_ptrs and ptr not in self.seen:
            self.seen.add(ptr)
            self.bytes += storage.nbytes()
        return tensor


def build(args: argparse.Namespace, reversible: bool, device: torch.device) -> nn.Module:
    """TransformerWrapper around a Decoder with the benchmark's shape, in train mode."""
    from x_attn import Decoder, TransformerWrapper

    torch.manual_seed(0)
    layers = Decoder(dim=args.dim, depth=args.depth, heads=args.heads, reversible=reversible)
    model = TransformerWrapper(num_tokens=args.num_tokens, max_seq_len=args.seq, attn_layers=layers)
    return model.to(device).train()


def train_step(model: nn.Module, tokens: Tensor, targets: Tensor) -> None:
    """Forward + cross-entropy + backward; tokens/targets (b, n), logits (b, n, v)."""
    model.zero_grad(set_to_none=True)
    logits = model(tokens)
    F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _current_rss_bytes() -> int:
    """Resident set size now (Linux /proc); falls back to the peak elsewhere."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    except OSError:
        return _peak_rss_bytes()


def measure(args: argparse.Namespace, reversible: bool) -> dict[str, float]:
    """Run in a fresh process: saved bytes, peak step memory, median step seconds."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = torch.device(args.device)
    model = build(args, reversible, device)
    gen = torch.Generator().manual_seed(1)
    tokens, targets = (
        torch.randint(0, args.num_tokens, (args.batch, args.seq), generator=gen).to(device)
        for _ in range(2)
    )
    train_step(model, tokens[:1, :8], targets[:1, :8])  # pages in kernels; tiny peak
    model.zero_grad(set_to_none=True)
    counter = SavedActivations(model)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _current_rss_bytes()
    with saved_tensors_hooks(counter.pack, lambda tensor: tensor):
        logits = model(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    saved = counter.bytes
    loss.backward()
    del logits, loss
    synchronize(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = _peak_rss_bytes() - base
    times = []
    for _ in range(args.repeats):
        synchronize(device)
        start = time.perf_counter()
        train_step(model, tokens, targets)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return dict(saved=saved, peak=peak, seconds=median(times))


def run_isolated(args: argparse.Namespace, reversible: bool) -> dict[str, float]:
    """``measure`` in a new spawned process, so that peak counters start from this model."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(measure, args, reversible).result()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_args(parser, dim=256, depth=12, heads=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--num-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--device", default=default_device())
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    peak_name = "peak CUDA alloc MiB" if device.type == "cuda" else "peak RSS delta MiB"
    results = {rev: run_isolated(args, rev) for rev in (False, True)}
    plain = results[False]
    rows = []
    for rev, res in results.items():
        rows.append(
            [
                "reversible=True" if rev else "reversible=False",
                f"{res['saved'] / MIB:.1f}",
                f"{res['peak'] / MIB:.1f}",
                f"{res['seconds']:.3f}",
                f"{res['saved'] / plain['saved']:.2f}x / {res['peak'] / max(plain['peak'], 1):.2f}x"
                f" / {res['seconds'] / plain['seconds']:.2f}x",
            ]
        )
    print(
        f"Decoder LM train step: dim {args.dim}, depth {args.depth}, heads {args.heads}, "
        f"seq {args.seq}, batch {args.batch}, vocab {args.num_tokens}, float32, {device}"
    )
    print("\n".join(machine_lines(device)))
    print()
    print(
        markdown_table(
            [
                "stack",
                "saved activations MiB",
                peak_name,
                f"median step s (of {args.repeats})",
                "vs plain (saved / peak / time)",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
