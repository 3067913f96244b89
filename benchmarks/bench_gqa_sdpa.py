"""What SDPA does with grouped key/value heads on this machine, and what x_attn does instead.

For grouped heads (h query heads, hk < h key/value heads), three ways to call
``scaled_dot_product_attention``: repeat k/v per query head first (a copy), pass them as they
are with ``enable_gqa=True``, or x_attn's adapter (``enable_gqa`` where SDPA's fused kernel takes
it, else the query heads of each group folded into the query axis). For each case the table
shows the median time and whether an ``aten::repeat_interleave`` (a per-head copy of k and v)
ran. Cases: decode (1 query, many keys) and prefill (i = j, padding mask), with equal head dims
(SDPA's fused CPU kernel) and with a value dim that differs (MLA's absorbed decode: SDPA falls
back to its math path).

Run: python benchmarks/bench_gqa_sdpa.py [--keys 8192] [--repeats 7]

Shape legend: h query heads, hk key/value heads, i queries, j keys, d / dv head dims.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
sys.path.insert(0, str(_HERE.parent))
from common import median, render_report  # noqa: E402

from x_attn.kernels.inputs import AttnInputs  # noqa: E402
from x_attn.kernels.sdpa import sdpa_attention  # noqa: E402


def cases(keys: int) -> dict[str, tuple]:
    """name -> (h, hk, i, j, d, dv, padded)."""
    return {
        f"decode, 8 heads on 2 kv heads, d 64, {keys} keys": (8, 2, 1, keys, 64, 64, False),
        f"decode, 8 heads on 1 latent head, d 160 / dv 128, {keys} keys": (
            8,
            1,
            1,
            keys,
            160,
            128,
            False,
        ),
        "prefill, 8 heads on 2 kv heads, d 64, 1024 tokens, padding": (
            8,
            2,
            1024,
            1024,
            64,
            64,
            True,
        ),
    }


def calls(h, hk, i, j, d, dv, padded) -> dict[str, Callable[[], object]]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, h, i, d, generator=g)
    k, v = torch.randn(1, hk, j, d, generator=g), torch.randn(1, hk, j, dv, generator=g)
    mask = None
    if padded:
        mask = torch.ones(1, 1, 1, j, dtype=torch.bool)
        mask[..., :3] = False
    causal = i > 1
    dense = None if mask is None else mask & torch.ones(i, j, dtype=torch.bool).tril(j - i)
    return {
        "repeat k/v, then SDPA": lambda: F.scaled_dot_product_attention(
            q,
            k.repeat_interleave(h // hk, 1),
            v.repeat_interleave(h // hk, 1),
            attn_mask=dense,
            is_causal=causal and dense is None,
        ),
        "SDPA enable_gqa=True": lambda: F.scaled_dot_product_attention(
            q, k, v, attn_mask=dense, is_causal=causal and dense is None, enable_gqa=True
        ),
        "x_attn sdpa_attention": lambda: sdpa_attention(
            AttnInputs(q, k, v, mask=mask, causal=causal, scale=d**-0.5)
        ),
    }


def copies(fn) -> bool:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return any(e.key == "aten::repeat_interleave" for e in prof.key_averages())


def run(args: argparse.Namespace) -> str:
    rows = []
    for name, shape in cases(args.keys).items():
        fns = calls(*shape)
        times = {label: [] for label in fns}
        for fn in fns.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for label, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - start)
        for label, fn in fns.items():
            rows.append([name, label, f"{1e3 * median(times[label]):.1f}", str(copies(fn))])
    header = (
        "## Grouped key/value heads in SDPA\n\n"
        f"float32, batch 1, cpu; median of {args.repeats} interleaved calls after a warm-up\n"
    )
    headers = ["case", "call", "ms (median)", "repeat_interleave ran"]
    return render_report(header, headers, rows, torch.device("cpu"), [])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    print(run(args))


if __name__ == "__main__":
    main()
