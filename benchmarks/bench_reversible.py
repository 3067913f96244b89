"""Benchmark: plain vs reversible residual stack.

Papers: RevNet (arXiv 1707.04585), Reformer (arXiv 2001.04451).

Prints, for depths 4, 8, 16, 32 of pre-norm MLP branch pairs (f, g):
- bytes saved for backward by the forward pass (sum of numel * element_size over every tensor
  packed by torch.autograd.graph.saved_tensors_hooks),
- peak saved bytes alive at once during forward + backward (includes the block that the
  reversible backward recomputes),
- median wall time of 5 forward + backward passes.

Run: ``python benchmarks/bench_reversible.py`` (CPU, well under a minute).
Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import Tensor, nn
from torch.autograd.graph import saved_tensors_hooks

from x_attn.layers.reversible import ReversibleSequence

BATCH, SEQ, DIM, MULT = 2, 256, 64, 4
DEPTHS = (4, 8, 16, 32)
REPEATS = 5


class MlpBranch(nn.Module):
    """Pre-norm MLP residual update: (b, n, d) -> (b, n, d)."""

    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, dim * mult), nn.GELU(), nn.Linear(dim * mult, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def plain_stack(model: ReversibleSequence, x: Tensor) -> Tensor:
    """The same two-stream equations with ordinary autograd (every activation stored)."""
    x1 = x2 = x
    for block in model.blocks:
        y1 = x1 + block.f(x2)
        y2 = x2 + block.g(y1)
        x1, x2 = y1, y2
    return (x1 + x2) / 2


class SavedBytes:
    """Counts bytes packed for backward and the peak alive at once."""

    def __init__(self) -> None:
        self.total = self.live = self.peak = 0

    def pack(self, tensor: Tensor) -> _Packed:
        return _Packed(tensor, self)


class _Packed:
    def __init__(self, tensor: Tensor, counter: SavedBytes) -> None:
        self.tensor, self.counter = tensor, counter
        self.nbytes = tensor.numel() * tensor.element_size()
        counter.total += self.nbytes
        counter.live += self.nbytes
        counter.peak = max(counter.peak, counter.live)

    def __del__(self) -> None:
        self.counter.live -= self.nbytes


def step(model: ReversibleSequence, x: Tensor, reversible: bool) -> None:
    out = model(x) if reversible else plain_stack(model, x)
    out.square().mean().backward()


def measure(depth: int, reversible: bool) -> tuple[int, int, float]:
    """(forward saved bytes, peak saved bytes, median fwd+bwd seconds)."""
    torch.manual_seed(0)
    pairs = [(MlpBranch(DIM, MULT), MlpBranch(DIM, MULT)) for _ in range(depth)]
    model = ReversibleSequence(pairs).train()
    x = torch.randn(BATCH, SEQ, DIM, requires_grad=True)
    counter = SavedBytes()
    with saved_tensors_hooks(counter.pack, lambda packed: packed.tensor):
        out = model(x) if reversible else plain_stack(model, x)
        forward_bytes = counter.total
        out.square().mean().backward()
    times = []
    for _ in range(REPEATS):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        step(model, x, reversible)
        times.append(time.perf_counter() - start)
    return forward_bytes, counter.peak, statistics.median(times)


def main() -> None:
    print(f"b={BATCH} n={SEQ} d={DIM} mlp_mult={MULT} float32, {torch.get_num_threads()} threads")
    header = (
        f"{'depth':>5} | {'plain saved MiB':>15} {'rev saved MiB':>13} | "
        f"{'plain peak MiB':>14} {'rev peak MiB':>12} | "
        f"{'plain ms':>8} {'rev ms':>8} {'slowdown':>8}"
    )
    print(header)
    print("-" * len(header))
    mib = 2.0**20
    for depth in DEPTHS:
        p_fwd, p_peak, p_time = measure(depth, reversible=False)
        r_fwd, r_peak, r_time = measure(depth, reversible=True)
        print(
            f"{depth:>5} | {p_fwd / mib:>15.2f} {r_fwd / mib:>13.2f} | "
            f"{p_peak / mib:>14.2f} {r_peak / mib:>12.2f} | "
            f"{p_time * 1e3:>8.1f} {r_time * 1e3:>8.1f} {r_time / p_time:>7.2f}x"
        )


if __name__ == "__main__":
    main()
