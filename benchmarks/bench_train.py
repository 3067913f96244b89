"""Training throughput: tokens/s of one train step (forward + backward + AdamW step).

Compares, at the same shape (decoder, learned absolute positions, pre-LayerNorm, GELU MLP x4):
x_attn default, x_attn attn_flash=True, x-transformers 2.31 default and attn_flash=True, x_attn with
checkpoint_layers=True and x_attn under torch.compile(fullgraph=True) (inductor), and a minimal
hand-written GPT on F.scaled_dot_product_attention. Runs are interleaved round-robin
(one timed run of every model per repeat) after a warm-up, and the median is reported.

Run (defaults: dim 512, depth 6, heads 8, seq 512, batch 4, vocab 256):
    python benchmarks/bench_train.py
    python benchmarks/bench_train.py --dim 64 --depth 2 --heads 4 --seq 64 --batch 2  # small

Shape legend: b batch, n sequence, h heads, d model dim, dh head dim.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))  # benchmarks/common.py
sys.path.insert(0, str(_HERE.parent))  # the x_attn of this working tree, even if not installed
from common import (  # noqa: E402
    add_shape_args,
    count_parameters,
    default_device,
    median,
    render_report,
    synchronize,
    time_calls,
)

BASELINE = "x-transformers attn_flash=True"
COMPILED = "x_attn torch.compile(fullgraph=True)"  # inductor; the warm-up steps compile it


class _Block(nn.Module):
    """Pre-LN block: x + attn(ln(x)), then x + mlp(ln(x)); qkv/out projections without bias."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(dim, bias=False)
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.ff_norm = nn.LayerNorm(dim, bias=False)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        """x: (b, n, d) -> (b, n, d)."""
        qkv = self.to_qkv(self.attn_norm(x))
        q, k, v = rearrange(qkv, "b n (three h dh) -> three b h n dh", three=3, h=self.heads)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.to_out(rearrange(attn, "b h n dh -> b n (h dh)"))
        return x + self.ff(self.ff_norm(x))


class SdpaGPT(nn.Module):
    """Minimal GPT: token + learned absolute position embeddings, pre-LN blocks, final LN."""

    def __init__(self, num_tokens: int, max_seq_len: int, dim: int, depth: int, heads: int):
        super().__init__()
        self.token_emb = nn.Embedding(num_tokens, dim)
        self.pos_emb = nn.Embedding(max_seq_len, dim)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, bias=False)
        self.to_logits = nn.Linear(dim, num_tokens, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens: (b, n) int -> logits (b, n, num_tokens)."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_emb(tokens) + self.pos_emb(positions)
        for block in self.blocks:
            x = block(x)
        return self.to_logits(self.norm(x))


@dataclass
class Entry:
    """One benchmarked model and its measurements."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    params: int
    tokens_per_s: list[float] = field(default_factory=list)
    peak_mib: float | None = None
    saved_mib: float | None = None  # bytes autograd keeps for backward (eager models only)


def _wrapper_builder(
    module_name: str, flash: bool, args: argparse.Namespace, **extra: object
) -> nn.Module:
    try:
        lib = importlib.import_module(module_name)
        wrapper_cls, decoder_cls = lib.TransformerWrapper, lib.Decoder
    except (ImportError, AttributeError) as err:
        raise ImportError(str(err)) from err
    # dim_head defaults to 64 in both libraries; pin it so every model has dim // heads
    kwargs = {"attn_dim_head": args.dim // args.heads}
    if flash:
        kwargs["attn_flash"] = True
    kwargs.update(extra)
    decoder = decoder_cls(dim=args.dim, depth=args.depth, heads=args.heads, **kwargs)
    return wrapper_cls(num_tokens=args.vocab, max_seq_len=args.seq, attn_layers=decoder)


def _candidates(args: argparse.Namespace) -> list[tuple[str, Callable[[], nn.Module]]]:
    return [
        ("x_attn default", lambda: _wrapper_builder("x_attn", False, args)),
        ("x_attn attn_flash=True", lambda: _wrapper_builder("x_attn", True, args)),
        (
            "x_attn checkpoint_layers=True",
            lambda: _wrapper_builder("x_attn", False, args, checkpoint_layers=True),
        ),
        (COMPILED, lambda: _wrapper_builder("x_attn", False, args)),
        ("x-transformers default", lambda: _wrapper_builder("x_transformers", False, args)),
        (BASELINE, lambda: _wrapper_builder("x_transformers", True, args)),
        (
            "hand-written SDPA GPT",
            lambda: SdpaGPT(args.vocab, args.seq, args.dim, args.depth, args.heads),
        ),
    ]


def build_entries(args: argparse.Namespace, device: torch.device) -> tuple[list[Entry], list[str]]:
    """Build every model that can be built; the rest become notes explaining why not."""
    entries, notes = [], []
    for name, build in _candidates(args):
        torch.manual_seed(0)
        try:
            model = build().to(device).train()
        except ImportError as err:
            notes.append(f"- skipped '{name}': not importable ({err})")
            continue
        except (TypeError, ValueError) as err:
            notes.append(f"- skipped '{name}': refused at construction ({err})")
            continue
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
        entry = Entry(name, model, optimizer, count_parameters(model))
        if name == COMPILED:
            entry.model = torch.compile(model, fullgraph=True)
        entries.append(entry)
    return entries, notes


def make_step(entry: Entry, tokens: Tensor, amp: str) -> Callable[[], None]:
    """One training step: next-token cross-entropy, backward, AdamW."""
    device_type = tokens.device.type

    def step() -> None:
        autocast = (
            torch.autocast(device_type, dtype=torch.bfloat16)
            if amp == "bf16"
            else contextlib.nullcontext()
        )
        with autocast:
            logits = entry.model(tokens[:, :-1])  # (b, n, num_tokens)
            loss = F.cross_entropy(logits.transpose(1, 2).float(), tokens[:, 1:])
        entry.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        entry.optimizer.step()

    return step


def saved_activation_mib(model: nn.Module, tokens: Tensor) -> float:
    """MiB of the tensors autograd keeps for backward during one forward (parameters too)."""
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(tokens)
    return total / 2**20


def run(args: argparse.Namespace) -> str:
    """Warm up, time interleaved repeats, and return the markdown report."""
    device = torch.device(args.device)
    entries, notes = build_entries(args, device)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=gen).to(device)
    steps = {e.name: make_step(e, tokens, args.amp) for e in entries}
    tokens_per_step = args.batch * args.seq

    for entry in entries:  # what autograd saves for backward in one forward (eager only)
        if entry.name != COMPILED:
            entry.saved_mib = saved_activation_mib(entry.model, tokens[:, :-1])
    for entry in entries:  # warm-up; on CUDA also the peak memory of one step
        if device.type == "cuda":
            synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        time_calls(steps[entry.name], args.warmup, device)
        if device.type == "cuda":
            entry.peak_mib = (torch.cuda.max_memory_allocated(device) - before) / 2**20

    for _ in range(args.repeats):  # round-robin: every model once per repeat
        for entry in entries:
            seconds = time_calls(steps[entry.name], args.steps, device)
            entry.tokens_per_s.append(tokens_per_step * args.steps / seconds)

    return format_report(args, device, entries, notes)


def format_report(
    args: argparse.Namespace, device: torch.device, entries: list[Entry], notes: list[str]
) -> str:
    """Markdown table (median tokens/s, range, ratio to the baseline, parameters) + context."""
    medians = {e.name: median(e.tokens_per_s) for e in entries}
    base = medians.get(BASELINE)
    headers = ["model", "params", "tokens/s (median)", "min-max", f"ratio vs {BASELINE}"]
    headers.append("saved for backward MiB")
    if device.type == "cuda":
        headers.append("step peak MiB")
    rows = []
    for e in entries:
        ratio = f"{medians[e.name] / base:.2f}" if base else "n/a"
        row = [
            e.name,
            f"{e.params:,}",
            f"{medians[e.name]:,.0f}",
            f"{min(e.tokens_per_s):,.0f}-{max(e.tokens_per_s):,.0f}",
            ratio,
            "n/a (compiled)" if e.saved_mib is None else f"{e.saved_mib:,.1f}",
        ]
        if device.type == "cuda":
            row.append(f"{e.peak_mib:,.0f}")
        rows.append(row)
    if base is None:
        notes.append(f"- ratio column unavailable: '{BASELINE}' was not run")
    if args.repeats < 5:
        notes.append(f"- only {args.repeats} repeats: use --repeats 5 or more for a stable median")
    header = (
        f"## Train step throughput (forward + backward + AdamW)\n\n"
        f"dim {args.dim}, depth {args.depth}, heads {args.heads}, seq {args.seq}, "
        f"batch {args.batch}, vocab {args.vocab}, device {device}, amp {args.amp}; "
        f"median of {args.repeats} interleaved repeats x {args.steps} steps "
        f"after {args.warmup} warm-up steps (they include the compile of the compiled row)\n"
    )
    return render_report(header, headers, rows, device, notes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_args(parser)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed repeats (>= 5)")
    parser.add_argument("--steps", type=int, default=5, help="train steps per timed repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--amp", choices=["none", "bf16"], default="none")
    args = parser.parse_args(argv)
    for name in ("dim", "depth", "heads", "seq", "batch", "vocab", "repeats", "steps", "warmup"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.dim % args.heads:
        parser.error(f"--dim ({args.dim}) must be divisible by --heads ({args.heads})")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(run(args))


if __name__ == "__main__":
    main()
