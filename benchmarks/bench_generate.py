"""Cached greedy decoding: generated tokens/s of x_attn next to x-transformers 2.31.

Both libraries run their own ``AutoregressiveWrapper.generate`` with the KV cache on and
temperature 0 (greedy), at the same shape (Decoder, learned absolute positions, pre-LayerNorm,
GELU MLP x4). Runs are interleaved round-robin (one timed generation of every model per repeat)
after a warm-up, and the median is reported. A third row, "weight matmuls only", times just the
per-token matrix-vector products with every Linear weight of the model (a floor that no decoder
with these weights can beat without changing precision or batch); a fourth checks x_attn's
cached tokens against its uncached path.

Run (defaults: batch 1, prompt 16, 256 new tokens, dim 512, depth 6, heads 8, vocab 256):
    python benchmarks/bench_generate.py
    python benchmarks/bench_generate.py --new 32 --dim 64 --depth 2 --heads 4  # small

Shape legend: b batch, p prompt length, t new tokens, d model dim.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
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
    time_calls,
)

BASELINE = "x-transformers 2.31 generate(cache_kv=True)"
OURS = "x_attn generate(cache_kv=True)"
STATIC = "x_attn static cache (eager)"
COMPILED = "x_attn static cache + torch.compile (inductor)"
FLOOR = "weight matmuls only (floor)"


@dataclass
class Entry:
    name: str
    run: Callable[[], None]
    params: int | None = None
    tokens_per_s: list[float] = field(default_factory=list)


def _build(lib_name: str, args: argparse.Namespace, device: torch.device) -> nn.Module:
    """AutoregressiveWrapper(TransformerWrapper(Decoder)) of one library, eval, on device."""
    if lib_name == "x_attn":
        import x_attn as lib
        from x_attn.wrappers.autoregressive import AutoregressiveWrapper
    else:
        import x_transformers as lib
        from x_transformers import AutoregressiveWrapper
    torch.manual_seed(0)
    decoder = lib.Decoder(
        dim=args.dim, depth=args.depth, heads=args.heads, attn_dim_head=args.dim // args.heads
    )
    net = lib.TransformerWrapper(
        num_tokens=args.vocab, max_seq_len=args.prompt + args.new, attn_layers=decoder
    )
    return AutoregressiveWrapper(net).to(device).eval()


def _floor_step(model: nn.Module, device: torch.device) -> Callable[[], None]:
    """Per-token matrix-vector products with every Linear weight of ``model`` (batch 1)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    inputs = [torch.randn(1, 1, m.in_features, device=device) for m in linears]

    @torch.inference_mode()
    def step() -> None:
        for layer, x in zip(linears, inputs):
            layer(x)

    return step


def _check_cache(model: nn.Module, prompt: Tensor, n: int) -> str:
    """x_attn's cached greedy tokens must equal its uncached ones (n tokens)."""
    cached = model.generate(prompt, n, temperature=0.0)
    plain = model.generate(prompt, n, temperature=0.0, cache_kv=False)
    same = bool(torch.equal(cached, plain))
    return f"- x_attn cached == uncached greedy tokens (first {n}): {same}"


def _static_entries(
    ours: nn.Module, prompt: Tensor, args: argparse.Namespace, notes: list[str]
) -> list[Entry]:
    """The static path, eager and compiled (inductor; compiled here, before any timing)."""
    if args.no_static:
        return []
    expected = ours.generate(prompt, args.new, temperature=0.0)
    entries = []
    for name, backend in ((STATIC, False), (COMPILED, "inductor")):
        if backend and args.no_compile:
            continue

        def run(backend=backend) -> Tensor:
            return ours.generate(
                prompt, args.new, temperature=0.0, static_cache=True, compile=backend
            )

        seconds = time_calls(run, 1, prompt.device)  # buffers built; compiled (inductor) once
        same = bool(torch.equal(run(), expected))
        notes.append(
            f"- {name}: same greedy tokens as x_attn generate(cache_kv=True): {same}; first "
            f"call (not timed; builds the buffers, and compiles in the inductor row) "
            f"{seconds:.1f} s"
        )
        entries.append(Entry(name, run))
    return entries


def build_entries(args: argparse.Namespace, device: torch.device) -> tuple[list[Entry], list[str]]:
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, args.vocab, (args.batch, args.prompt), generator=gen).to(device)
    ours = _build("x_attn", args, device)
    entries = [
        Entry(
            OURS, lambda: ours.generate(prompt, args.new, temperature=0.0), count_parameters(ours)
        )
    ]
    notes = [_check_cache(ours, prompt, min(args.new, 32))]
    entries += _static_entries(ours, prompt, args, notes)
    try:
        theirs = _build("x_transformers", args, device)
        entries.append(
            Entry(
                BASELINE,
                lambda: theirs.generate(prompt, args.new, temperature=0.0, cache_kv=True),
                count_parameters(theirs),
            )
        )
    except ImportError as err:
        notes.append(f"- skipped x-transformers: not importable ({err})")
    floor = _floor_step(ours, device)
    entries.append(Entry(FLOOR, lambda: time_calls(floor, args.new, device)))
    return entries, notes


def run(args: argparse.Namespace) -> str:
    """Warm up, time interleaved repeats, and return the markdown report."""
    device = torch.device(args.device)
    entries, notes = build_entries(args, device)
    for entry in entries:
        time_calls(entry.run, args.warmup, device)
    for _ in range(args.repeats):  # round-robin: every entry once per repeat
        for entry in entries:
            seconds = time_calls(entry.run, 1, device)
            entry.tokens_per_s.append(args.batch * args.new / seconds)
    return format_report(args, device, entries, notes)


def format_report(
    args: argparse.Namespace, device: torch.device, entries: list[Entry], notes: list[str]
) -> str:
    """Markdown table (median tokens/s, range, ratios) + context.

    The ratio columns are medians of per-repeat ratios: a repeat times every row back to back,
    so its ratios cancel most of the load drift of a shared machine."""
    medians = {e.name: median(e.tokens_per_s) for e in entries}
    by_name = {e.name: e.tokens_per_s for e in entries}
    headers = ["decoder", "params", "new tokens/s (median)", "min-max"]
    headers += ["ratio vs x-transformers", "ratio vs floor"]

    def ratio(entry: Entry, other: str) -> str:
        if other not in by_name:
            return "n/a"
        return f"{median([a / b for a, b in zip(entry.tokens_per_s, by_name[other])]):.2f}"

    rows = [
        [
            e.name,
            f"{e.params:,}" if e.params is not None else "-",
            f"{medians[e.name]:,.1f}",
            f"{min(e.tokens_per_s):,.1f}-{max(e.tokens_per_s):,.1f}",
            ratio(e, BASELINE),
            ratio(e, FLOOR),
        ]
        for e in entries
    ]
    header = (
        "## Generation\n\n"
        f"Cached greedy decode: batch {args.batch}, prompt {args.prompt}, {args.new} new tokens, "
        f"Decoder dim {args.dim} depth {args.depth} heads {args.heads}, vocab {args.vocab}, "
        f"device {device}, float32; median of {args.repeats} interleaved repeats (ratios: "
        f"median of the per-repeat ratios) after "
        f"{args.warmup} warm-up run(s); torch.compile only in the compiled row, whose "
        "compilation happens before the timed runs\n"
    )
    return render_report(header, headers, rows, device, notes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_args(parser)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new", type=int, default=256, help="tokens to generate")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed repeats")
    parser.add_argument("--warmup", type=int, default=1, help="untimed generations per model")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--no-static", action="store_true", help="skip the static-cache rows")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled row")
    args = parser.parse_args(argv)
    names = ("dim", "depth", "heads", "prompt", "new", "batch", "vocab", "repeats", "warmup")
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.dim % args.heads:
        parser.error(f"--dim ({args.dim}) must be divisible by --heads ({args.heads})")
    return args


def main(argv: list[str] | None = None) -> None:
    print(run(parse_args(argv)))


if __name__ == "__main__":
    main()
