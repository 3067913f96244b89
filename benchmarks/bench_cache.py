"""KV-cache bytes per token and cached-decode tokens/s: MHA, GQA, MQA and MLA side by side.

One model size (Decoder, rotary positions, pre-LayerNorm, float32), five attention layouts:
multi-head (MHA), grouped-query with heads/4 key/value heads (GQA), multi-query (MQA), and
multi-head latent attention (MLA, d_c = 4 * dim_head, rotary dims d_R = the stack's rotary dim)
decoding absorbed and materialised (``attn_latent_absorb=True`` / ``False``: the same weights,
the same cache).

* Cache bytes: measured from the cache a real prefill returns (two prompt lengths, the growth
  per token), printed next to the formula of the MLA paper's comparison table (arXiv
  2405.04434, Table 1), in elements per token and layer: MHA 2 n_h d_h, GQA 2 n_g d_h, MQA
  2 d_h, MLA d_c + d_R.
* Decode tokens/s at each context length: the cache is filled with random keys / latents of
  the right shapes (decode time does not depend on their values; a real 8k prefill of five
  models would dominate the run), then batch-1 single-token steps are timed. Entries run
  round-robin (every model and context once per repeat) after warm-up steps, medians reported.
  ``uptime`` is recorded before and after: the machine may be shared.

Run (defaults: dim 512, depth 6, heads 8, contexts 1024 and 8192, 4 steps x 5 repeats):
    python benchmarks/bench_cache.py
    python benchmarks/bench_cache.py --dim 64 --depth 2 --heads 4 --contexts 64 128  # small

Shape legend: b batch (1), n context length, hk key/value heads, dh head dim, w latent width.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))  # benchmarks/common.py
sys.path.insert(0, str(_HERE.parent))  # the x_attn of this working tree, even if not installed
from common import add_shape_args, median, render_report, time_calls  # noqa: E402

from x_attn import Decoder, TransformerWrapper  # noqa: E402
from x_attn.cache import KVCache, KVEntry, LatentEntry  # noqa: E402
from x_attn.positional.stack_positions import default_rotary_dim  # noqa: E402
from x_attn.train.measure import cache_bytes_per_token  # noqa: E402


@dataclass
class Layout:
    """One attention layout: its flags and the paper's cache formula (elements/token/layer)."""

    name: str
    flags: dict
    formula: str
    elements: int
    model: TransformerWrapper | None = None
    tokens_per_s: dict[int, list[float]] = field(default_factory=dict)


def layouts(args: argparse.Namespace) -> list[Layout]:
    h, dh = args.heads, args.dim // args.heads
    g, c, r = max(1, h // 4), 4 * dh, default_rotary_dim(dh)
    mla = {"attn_use_latent_kv": True, "attn_dim_latent_kv": c}
    return [
        Layout("MHA", {}, f"2 n_h d_h = 2*{h}*{dh}", 2 * h * dh),
        Layout(f"GQA (kv_heads={g})", {"attn_kv_heads": g}, f"2 n_g d_h = 2*{g}*{dh}", 2 * g * dh),
        Layout("MQA", {"attn_one_kv_head": True}, f"2 d_h = 2*{dh}", 2 * dh),
        Layout("MLA absorbed", {**mla, "attn_latent_absorb": True}, f"d_c + d_R = {c}+{r}", c + r),
        Layout(
            "MLA materialised",
            {**mla, "attn_latent_absorb": False},
            f"d_c + d_R = {c}+{r}",
            c + r,
        ),
    ]


def build(layout: Layout, args: argparse.Namespace) -> TransformerWrapper:
    torch.manual_seed(0)
    layers = Decoder(
        dim=args.dim,
        depth=args.depth,
        heads=args.heads,
        attn_dim_head=args.dim // args.heads,
        rotary_pos_emb=True,
        **layout.flags,
    )
    return TransformerWrapper(num_tokens=args.vocab, max_seq_len=64, attn_layers=layers).eval()


def filled_cache(model: TransformerWrapper, n: int) -> KVCache:
    """A cache holding ``n`` positions of random keys/latents, shaped as the layers keep them."""
    entries = []
    for layer in model.attn_layers.layers:
        block = layer["block"]
        if not hasattr(block, "proj"):
            continue
        proj, fresh = block.proj, block.new_cache_entry()
        if isinstance(fresh, LatentEntry):
            width = proj.latent + proj.rope_heads * proj.rope_dim
            entries.append(LatentEntry(torch.randn(1, 1, n, width), start=0))
        else:
            k = torch.randn(1, proj.k_heads, n, proj.qk_dim)
            entries.append(KVEntry(k, torch.randn(1, proj.v_heads, n, proj.v_dim), start=0))
    return KVCache(entries=entries, length=n)


def decode_steps(model: TransformerWrapper, cache: KVCache, steps: int) -> Callable[[], None]:
    """``steps`` single-token decode calls that extend ``cache`` (inference mode)."""
    token = torch.zeros(1, 1, dtype=torch.long)

    @torch.inference_mode()
    def run() -> None:
        for _ in range(steps):
            model(token, cache=cache, return_cache=True)

    return run


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError as error:
        return f"uptime unavailable ({error})"


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    before = uptime()
    items = layouts(args)
    runs = []
    for layout in items:
        layout.model = build(layout, args)
        for n in args.contexts:
            cache = filled_cache(layout.model, n)
            decode_steps(layout.model, cache, args.warmup)()  # also grows the cache's buffers
            runs.append((layout, n, decode_steps(layout.model, cache, args.steps)))
    device = torch.device("cpu")
    for _ in range(args.repeats):
        for layout, n, step in runs:
            seconds = time_calls(step, 1, device)
            layout.tokens_per_s.setdefault(n, []).append(args.steps / seconds)
    return report(args, items, before, uptime())


def report(args: argparse.Namespace, items: list[Layout], before: str, after: str) -> str:
    headers = [
        "layout",
        "MLA paper's formula (elements/token/layer)",
        "measured elements/token/layer",
        "measured bytes/token (all layers)",
        "params",
    ]
    headers += [f"decode tokens/s @ {n} (median, min-max)" for n in args.contexts]
    rows = []
    for layout in items:
        per_token, _ = cache_bytes_per_token(layout.model, lengths=(16, 32))
        measured = per_token / 4 / args.depth  # float32
        row = [layout.name, f"{layout.formula} = {layout.elements:,}", f"{measured:,.0f}"]
        row += [f"{per_token:,.0f}", f"{sum(p.numel() for p in layout.model.parameters()):,}"]
        for n in args.contexts:
            speeds = layout.tokens_per_s[n]
            row.append(f"{median(speeds):.1f} ({min(speeds):.1f}-{max(speeds):.1f})")
        rows.append(row)
    header = (
        "## KV cache: bytes per token and cached decoding\n\n"
        f"Decoder dim {args.dim}, depth {args.depth}, heads {args.heads}, dim_head "
        f"{args.dim // args.heads}, rotary positions, float32, batch 1, cpu; decode: "
        f"{args.steps} single-token steps per timing, median of {args.repeats} interleaved "
        f"repeats after {args.warmup} warm-up steps; no torch.compile\n"
    )
    notes = [f"- uptime before: {before}", f"- uptime after: {after}"]
    return render_report(header, headers, rows, torch.device("cpu"), notes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_args(parser)
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192])
    parser.add_argument("--steps", type=int, default=4, help="decode steps per timing")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed repeats")
    parser.add_argument("--warmup", type=int, default=2, help="untimed decode steps per entry")
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    for name in ("dim", "depth", "heads", "steps", "repeats", "warmup", "vocab"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.dim % args.heads:
        parser.error(f"--dim ({args.dim}) must be divisible by --heads ({args.heads})")
    if min(args.contexts) < 1:
        parser.error("--contexts must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    print(run(parse_args(argv)))


if __name__ == "__main__":
    main()
