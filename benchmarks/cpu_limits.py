"""What this CPU allows at the issue-13 shapes: matmul peak, the train step's matmul share, and
the batch-1 decode weight reads.

Three measurements, each a bound that the speed goals of issue 13 are read against:

1. **sgemm peak**: GFLOP/s of float32 matmuls at the shapes of the train step (2048 tokens x
   512 -> 512/1536/2048 and back) and of a large square matmul; the best of these is the most
   any float32 train step can get from this CPU's matmul kernels.
2. **train step split**: one x_attn train step (Decoder dim 512 depth 6 heads 8, seq 512,
   batch 4; forward + backward + AdamW) under torch.profiler: the self time of the matmul and
   SDPA kernels against everything else, and the FLOPs of its linear layers (6 per weight and
   token), so the step time at 100% of the peak follows.
3. **decode weight reads**: one generated token at batch 1 multiplies every Linear weight of
   the dim-512 depth-6 decoder by a vector (76 MB of float32 weights). Times the same products
   as ``F.linear`` (what every eager decoder runs), as ``x @ W^T`` with the weight stored
   transposed (the fastest float32 layout found), in bfloat16 (other precision: for
   orientation only), and a plain ``sum`` over the same bytes (memory bandwidth).

Run: ``python benchmarks/cpu_limits.py`` (about a minute; run it on a quiet machine).

Shape legend: n tokens per step, d model dim, e hidden dim.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
sys.path.insert(0, str(_HERE.parent))
from common import machine_lines, markdown_table, median  # noqa: E402

DIM, DEPTH, HEADS, SEQ, BATCH, VOCAB = 512, 6, 8, 512, 4, 256
LINEAR_KERNELS = ("aten::mm", "aten::addmm")
MATMUL_KERNELS = (
    *LINEAR_KERNELS,
    "aten::bmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
)


def seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``fn()`` after three untimed calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times)


def sgemm_rows() -> list[list[str]]:
    tokens = SEQ * BATCH
    shapes = [(tokens, DIM, 3 * DIM), (tokens, DIM, 4 * DIM), (tokens, 4 * DIM, DIM)]
    shapes += [(tokens, DIM, DIM), (4096, 4096, 4096)]
    rows = []
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        took = seconds(lambda a=a, b=b: a @ b, 10)
        rows.append([f"({m} x {k}) @ ({k} x {n})", f"{2 * m * k * n / took / 1e9:.1f}"])
    return rows


def train_split() -> tuple[float, float, float, float, float]:
    """(step seconds, matmul+SDPA seconds, linear-layer matmul seconds, other seconds, linear
    GFLOP per step)."""
    from torch.profiler import ProfilerActivity, profile

    from x_attn import Decoder, TransformerWrapper

    torch.manual_seed(0)
    layers = Decoder(dim=DIM, depth=DEPTH, heads=HEADS, attn_dim_head=DIM // HEADS)
    model = TransformerWrapper(num_tokens=VOCAB, max_seq_len=SEQ, attn_layers=layers).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1))

    def step() -> None:
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    took = seconds(step, 3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    kernels = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_KERNELS) / 1e6
    linear = sum(e.self_cpu_time_total for e in events if e.key in LINEAR_KERNELS) / 1e6
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return took, kernels, linear, total - kernels, 6 * weights * SEQ * BATCH / 1e9


def decode_rows() -> list[list[str]]:
    """Seconds per token of the batch-1 products with every Linear weight, several ways."""
    weights = []
    for _ in range(DEPTH):  # q, k, v, out; feed-forward in and out
        weights += [torch.randn(DIM, DIM) for _ in range(4)]
        weights += [torch.randn(4 * DIM, DIM), torch.randn(DIM, 4 * DIM)]
    weights.append(torch.randn(VOCAB, DIM))  # logits
    nbytes = sum(w.numel() for w in weights) * 4
    vectors = [torch.randn(1, w.shape[1]) for w in weights]
    transposed = [w.t().contiguous() for w in weights]
    halves = [w.bfloat16() for w in weights]
    ways = {
        "F.linear(x, W), float32 (every eager decoder)": lambda: [
            F.linear(x, w) for x, w in zip(vectors, weights)
        ],
        "x @ W^T stored transposed, float32": lambda: [x @ w for x, w in zip(vectors, transposed)],
        "F.linear, bfloat16 weights (other precision)": lambda: [
            F.linear(x.bfloat16(), w) for x, w in zip(vectors, halves)
        ],
        "sum over the float32 weights (bandwidth only)": lambda: [w.sum() for w in weights],
    }
    rows = []
    for name, fn in ways.items():
        took = seconds(fn, 40)
        rows.append([name, f"{took * 1e3:.2f}", f"{1 / took:.0f}", f"{nbytes / took / 1e9:.1f}"])
    return rows


def main() -> None:
    device = torch.device("cpu")
    peak_rows = sgemm_rows()
    peak = max(float(r[1]) for r in peak_rows)
    print("### float32 matmul peak\n")
    print(markdown_table(["matmul", "GFLOP/s (median)"], peak_rows))
    took, kernels, linear, other, gflop = train_split()
    print(f"\n### Train step split (x_attn, dim {DIM} depth {DEPTH}, seq {SEQ}, batch {BATCH})\n")
    print(f"- step {took:.3f} s ({SEQ * BATCH / took:,.0f} tokens/s)")
    print(f"- profiler self time: matmul + SDPA kernels {kernels:.3f} s, the rest {other:.3f} s")
    print(f"- of which the linear layers' mm/addmm {linear:.3f} s: {gflop / linear:.0f} GFLOP/s")
    print(f"- linear layers: {gflop:.1f} GFLOP per step, {gflop / took:.0f} GFLOP/s over the step")
    print(f"- linear layers alone at the peak ({peak:.0f} GFLOP/s): {gflop / peak:.3f} s per step")
    print("\n### Batch-1 decode: every Linear weight times a vector, per token\n")
    headers = ["way", "ms per token", "tokens/s if that were all", "GB/s of float32 weights"]
    print(markdown_table(headers, decode_rows()))
    print()
    print("\n".join(machine_lines(device)))


if __name__ == "__main__":
    main()
