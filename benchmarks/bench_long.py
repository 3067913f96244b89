"""Long-context cost of one attention layer: full SDPA vs the efficient mechanisms (issue 9).

For each mechanism and length: seconds of one forward + backward of one causal attention layer
(dim 256, heads 4, head dim 64, batch 1, float32) and its peak memory, measured in a fresh
process each (on CPU the peak resident memory above the process's baseline and the peak of
bytes held in tensors, see :func:`train_step`; CUDA peak allocation on a GPU). Then the
cached decode time per token at 1k and 16k tokens of context (one process per mechanism, the
contexts taken in turn over repeated rounds; medians).

Each fwd+bwd row also gives the median system-CPU seconds and minor page faults of a pass. On
Linux, glibc's malloc serves every block of 32 MiB or more with a fresh mmap and unmaps it on
free, so each such tensor is faulted in (and zeroed by the kernel) on every pass: a real cost
of the default allocator that appears as a step where a layer's largest buffers cross 32 MiB
(q, k, v and their gradients at 32k tokens; 8k for Performer's (n, d ln d) features).
``--no-mmap`` runs the cases with glibc's mmap off (``MALLOC_MMAP_MAX_=0``, freed memory kept)
to show the scaling without that step; the default measures the allocator as it is.

Mechanisms: ``full`` (causal SDPA), ``window`` (attn_window_size=256, blockwise kernel),
``dense-window`` (SDPA with a dense (n, n) band mask, the way x-transformers' ``max_attend_past``
does it), ``linear`` (elu+1, chunked causal), ``performer`` (FAVOR+, d ln d features),
``sparse-fixed`` (Sparse Transformer fixed pattern, l = 128, c = 8, block-sparse kernel) and
``lsh`` (Reformer LSH, buckets of 64, 8 rounds; no KV cache, so no decode row). A case whose
dense mask would not fit is skipped and the table says so.

Run: ``python benchmarks/bench_long.py --lengths 1024 2048 4096 8192 16384``
(``--repeats`` timed passes after one warm-up at the same length, 5 by default)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import NO_MMAP, machine_lines, markdown_table  # noqa: E402

DIM, HEADS, DIM_HEAD, WINDOW = 256, 4, 64, 256
MECHANISMS = {
    "full": {},
    "window": {"window_size": WINDOW},
    "dense-window": {},
    "linear": {"linear_attn": True},
    "performer": {"performer": True},
    "sparse-fixed": {"sparse_pattern": "fixed", "sparse_block": 128, "sparse_summary": 8},
    "lsh": {"lsh": True},
}
DECODE = ("full", "window", "linear", "performer", "sparse-fixed")  # LSH keeps no cache
DENSE_LIMIT = 16384  # above this the dense band mask and its SDPA buffers pass ~8 GiB


def layer(name: str, device: torch.device):
    from x_attn.attention.attention import Attention

    torch.manual_seed(0)
    return Attention(DIM, HEADS, causal=True, dim_head=DIM_HEAD, **MECHANISMS[name]).to(device)


def band(n: int, device: torch.device) -> torch.Tensor:
    pos = torch.arange(n, device=device)
    dist = pos.unsqueeze(-1) - pos
    return (dist >= 0) & (dist < WINDOW)


def train_step(name: str, n: int, device: str, repeats: int, queue) -> None:
    """One warm-up, then ``repeats`` timed forward + backward passes; puts (median seconds,
    peak MiB, tensor peak MiB, median system seconds, median minor page faults) on ``queue``.

    Before the baseline the layer runs once at 256 tokens, so what a process pays once (lazy
    imports: the first einops call on a tensor imports torch._dynamo, ~50 MiB; kernel code
    pages) is not counted as the layer's memory at ``n`` tokens. The peak is then the resident
    set's high-water mark above that baseline over all passes (which includes what the C
    allocator keeps after frees); the tensor peak is the most bytes held in tensors at once
    during one more pass (the profiler's allocation events on CPU; on CUDA both are
    ``max_memory_allocated``).
    """
    device = torch.device(device)
    attn = layer(name, device)
    short = torch.randn(1, 256, DIM, device=device, requires_grad=True)
    attn(short, attn_mask=band(256, device) if name == "dense-window" else None).sum().backward()
    x = torch.randn(1, n, DIM, device=device, requires_grad=True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mask = band(n, device) if name == "dense-window" else None  # counted in the peak
    times, system, faults = [], [], []
    for _ in range(1 + repeats):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            torch.cuda.synchronize(device)
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        out = attn(x, attn_mask=mask)
        out.sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
        system.append(after.ru_stime - before.ru_stime)
        faults.append(after.ru_minflt - before.ru_minflt)
    if device.type == "cuda":
        peak = tensors = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
        held = mask.numel() * mask.element_size() if mask is not None else 0
        tensors = (held + tensor_peak(lambda: attn(x, attn_mask=mask).sum().backward())) / 2**20
    medians = [statistics.median(t[1:]) for t in (times, system, faults)]
    queue.put((medians[0], peak, tensors, *medians[1:]))


def tensor_peak(step) -> int:
    """Most bytes held at once by tensors allocated during ``step()`` (CPU allocator events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        held += event.nbytes()
        peak = max(peak, held)
    return peak


def decode_step(name: str, contexts: list[int], device: str, queue, steps: int = 16) -> None:
    """Seconds per decoded token after a prefill of each of ``contexts`` tokens (no autograd),
    the contexts taken in turn over several repeats in one process; puts the medians."""
    device = torch.device(device)
    attn = layer(name, device).eval()
    with torch.inference_mode():
        entries = []
        for n in contexts:
            entries.append(attn.new_cache_entry())
            attn(torch.randn(1, n, DIM, device=device), cache=entries[-1])
        x = torch.randn(1, 1, DIM, device=device)
        times = [[] for _ in contexts]
        for _ in range(7):
            for entry, took in zip(entries, times):
                start = time.perf_counter()
                for _ in range(steps):
                    attn(x, cache=entry)
                took.append((time.perf_counter() - start) / steps)
        queue.put(([statistics.median(t) for t in times], 0.0))


def measure(fn, *args) -> tuple[float, float] | None:
    """Run ``fn`` in a fresh process; None when it dies (out of memory)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=fn, args=(*args, queue))
    proc.start()
    proc.join()
    return queue.get() if proc.exitcode == 0 else None


def plot(rows: list[list], path: Path) -> None:
    """Log-log chart of forward + backward seconds against length, a line per mechanism."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r[0] for r in rows):
        points = [(r[1], float(r[2])) for r in rows if r[0] == name and r[3]]
        if points:
            ax.plot(*zip(*points), marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="tokens", ylabel="fwd+bwd seconds (one layer)")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--decode", type=int, nargs="+", default=[1024, 16384])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mechanisms", nargs="+", choices=list(MECHANISMS), default=None)
    parser.add_argument("--plot", type=Path, help="write a log-log PNG of fwd+bwd seconds here")
    parser.add_argument("--repeats", type=int, default=5, help="timed fwd+bwd passes per case")
    parser.add_argument("--no-mmap", action="store_true", help="glibc malloc without mmap")
    args = parser.parse_args()
    if args.no_mmap:  # read by glibc when each spawned case process starts
        os.environ.update(NO_MMAP)
    names = args.mechanisms or list(MECHANISMS)
    rows = []
    for n in args.lengths:
        for name in names:
            if name == "dense-window" and n > DENSE_LIMIT:
                rows.append([name, n, "skipped: dense mask too large", "", "", "", "", ""])
                continue
            got = measure(train_step, name, n, args.device, args.repeats)
            if got is None:
                rows.append([name, n, "failed (out of memory?)", "", "", "", "", ""])
                continue
            full = next((r for r in rows if r[0] == "full" and r[1] == n), None)
            ratio = f"{float(full[2]) / got[0]:.1f}x" if full and name != "full" else ""
            sizes = (f"{got[1]:.0f}", f"{got[2]:.0f}", f"{got[3]:.2f}", f"{got[4] / 1e3:.0f}k")
            rows.append([name, n, f"{got[0]:.3f}", *sizes, ratio])
            print(rows[-1], flush=True)
    if args.plot:
        plot(rows, args.plot)
    decode = []
    for name in (d for d in DECODE if d in names):
        got = measure(decode_step, name, args.decode, args.device)
        for index, n in enumerate(args.decode):
            cost = got[0][index] if got else None
            ratio = f"{cost / got[0][0]:.2f}x" if got and index else ""
            decode.append([name, n, f"{cost * 1e3:.2f}" if cost else "failed", ratio])
            print(decode[-1], flush=True)
    head = ["mechanism", "tokens", "fwd+bwd s", "peak MiB", "tensor peak MiB", "sys s", "faults"]
    head.append("speed-up")
    print(markdown_table(head, rows))
    print()
    print(markdown_table(["mechanism", "context", "decode ms/token", "vs first"], decode))
    print("\n".join(machine_lines(torch.device(args.device))))
    print(f"- {args.repeats} timed passes per case; glibc mmap {'off' if args.no_mmap else 'on'}")


if __name__ == "__main__":
    main()
