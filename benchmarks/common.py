"""Shared helpers for the benchmark scripts: device choice, timing, machine info, tables."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch

# glibc malloc without memory maps and with freed memory kept: read by glibc when a process
# starts, so a benchmark sets it before spawning the processes it times (--no-mmap)
NO_MMAP = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}


def default_device() -> str:
    """'cuda' when a GPU is visible, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], None], calls: int, device: torch.device) -> float:
    """Seconds taken by ``calls`` back-to-back calls of ``fn`` (synchronized at both ends)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return statistics.median(values)


def machine_lines(device: torch.device) -> list[str]:
    """Human-readable lines describing the machine and software versions."""
    processor = platform.processor() or platform.machine() or "unknown"
    lines = [
        f"- machine: {platform.system()} {platform.release()}, processor: {processor}, "
        f"cpu count: {os.cpu_count()}, torch threads: {torch.get_num_threads()}",
        f"- python {platform.python_version()}, torch {torch.__version__}",
    ]
    if device.type == "cuda":
        lines.append(f"- GPU: {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})")
    else:
        lines.append("- GPU: none used (device cpu)")
    return lines


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Render a simple GitHub-flavoured markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out.extend("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)
    return "\n".join(out)


def count_parameters(module: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def add_shape_args(parser, dim: int = 512, depth: int = 6, heads: int = 8) -> None:
    """The model-shape flags every benchmark takes: --dim --depth --heads."""
    parser.add_argument("--dim", type=int, default=dim)
    parser.add_argument("--depth", type=int, default=depth)
    parser.add_argument("--heads", type=int, default=heads)


def render_report(header: str, headers, rows, device, notes: list[str]) -> str:
    """Header, markdown table, then the machine lines and notes."""
    context = "\n".join(machine_lines(device) + notes)
    return f"{header}\n{markdown_table(headers, rows)}\n\n{context}"
