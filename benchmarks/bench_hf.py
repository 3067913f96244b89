"""Imported x_attn model vs the Hugging Face original: forward and cached-decode tokens/s.

For a tiny Llama and a ~100M-parameter Llama-shaped config (both built locally, random
weights), times the x_attn model made by ``x_attn.interop.from_hf`` next to the Hugging Face
model with ``attn_implementation="eager"`` and ``"sdpa"``, CPU float32, in one run:

* forward: three full forwards of a (batch, seq) block, tokens/s = 3 * batch * seq / seconds;
* decode: greedy generation of ``--new`` tokens after a ``--prompt``-token prompt with the KV
  cache (x_attn ``AutoregressiveWrapper.generate(temperature=0)``, Hugging Face
  ``generate(do_sample=False)``), tokens/s = batch * new / seconds.

Each candidate runs in its own process (spawned; it builds the same seeded models and times
only its own), as a user runs one model: in one shared process the allocator made a model's
speed depend on which model had run before it (glibc trimmed and regrew the heap around the
other model's activations, up to 5% on the ~100M forward); ``--same-process`` times them all in
this one. A fresh process's allocator still maps and unmaps every buffer above its threshold
until it has freed a large one, so with ``--no-mmap`` the workers run glibc malloc without
memory maps and with freed memory kept (the same for every candidate). Repeats are interleaved
(every candidate once per round, the order rotated from round to round) and the table shows
medians; the candidates must generate the same tokens.

Run: python benchmarks/bench_hf.py
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import transformers  # noqa: E402
from common import NO_MMAP, machine_lines, markdown_table, median, time_calls  # noqa: E402

from x_attn import AutoregressiveWrapper  # noqa: E402
from x_attn.interop import from_hf  # noqa: E402

SHAPES = {
    "tiny": dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "~100M": dict(
        vocab_size=16000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
    ),
}


def candidates(shape: dict) -> dict[str, tuple[torch.nn.Module, object]]:
    """name -> (model, decode function(prompt, new) -> tokens)."""
    config = transformers.LlamaConfig(**shape, max_position_embeddings=1024, bos_token_id=0)
    torch.manual_seed(0)
    out = {}
    for impl in ("eager", "sdpa"):
        hf = transformers.LlamaForCausalLM._from_config(config, attn_implementation=impl).eval()
        if impl == "eager":
            state = hf.state_dict()
        else:
            hf.load_state_dict(state)
        out[f"HF {impl}"] = (hf, _hf_decode(hf))
    ours = from_hf(out["HF sdpa"][0])
    wrapper = AutoregressiveWrapper(ours)
    out["x_attn"] = (ours, lambda p, n: wrapper.generate(p, n, temperature=0.0, cache_kv=True))
    return out


def _hf_decode(hf: torch.nn.Module):
    def decode(prompt: torch.Tensor, new: int) -> torch.Tensor:
        kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        return hf.generate(prompt, eos_token_id=None, **kwargs)[:, prompt.shape[1] :]

    return decode


def forward_fn(model: torch.nn.Module, x: torch.Tensor):
    hf = isinstance(model, transformers.PreTrainedModel)
    return (lambda: model(x, use_cache=False).logits) if hf else (lambda: model(x))


def _inputs(name: str, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward block (batch, seq) and the prompt (its first ``--prompt`` tokens)."""
    vocab = SHAPES[name]["vocab_size"]
    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, vocab, (args.batch, args.seq), generator=g)
    return x, x[:, : args.prompt]


def _time_one(model: torch.nn.Module, decode, x, prompt, args) -> tuple[float, float]:
    """(forward tokens/s, decode tokens/s) of one round, after untimed forwards for at least
    0.2 s (one ~100M forward, dozens of tiny ones): a process that sat idle while the others
    ran starts cold, and its first forwards take up to twice as long."""
    call = forward_fn(model, x)
    start = time.perf_counter()
    while True:
        call()
        if time.perf_counter() - start >= 0.2:
            break
    forward = 3 * args.batch * args.seq / time_calls(call, 3, x.device)
    seconds = time_calls(lambda: decode(prompt, args.new), 1, x.device)
    return forward, args.batch * args.new / seconds


def _worker(conn, name: str, key: str, args: argparse.Namespace) -> None:
    """One candidate in its own process: builds the models (the same seeded weights as every
    other worker), reports its parameters and greedy tokens, then times a round per request."""
    torch.set_grad_enabled(False)
    model, decode = candidates(SHAPES[name])[key]
    x, prompt = _inputs(name, args)
    conn.send((sum(p.numel() for p in model.parameters()), decode(prompt, args.new)))
    while conn.recv():
        conn.send(_time_one(model, decode, x, prompt, args))


def _rounds(name: str, args: argparse.Namespace, keys: list[str]):
    """{key: (params, tokens, [(forward, decode) per round])}: rounds interleaved, the order
    rotated from round to round; each candidate in its own process unless --same-process."""
    if args.same_process:
        models = candidates(SHAPES[name])
        x, prompt = _inputs(name, args)
        params = sum(p.numel() for p in models["x_attn"][0].parameters())
        out = {k: (params, models[k][1](prompt, args.new), []) for k in keys}
        run = {k: (lambda k=k: _time_one(*models[k], x, prompt, args)) for k in keys}
    else:
        ctx = mp.get_context("spawn")
        pipes = {k: ctx.Pipe() for k in keys}
        procs = [ctx.Process(target=_worker, args=(pipes[k][1], name, k, args)) for k in keys]
        for proc in procs:
            proc.start()
        out = {k: (*pipes[k][0].recv(), []) for k in keys}
        run = {k: (lambda k=k: (pipes[k][0].send(True), pipes[k][0].recv())[1]) for k in keys}
    for r in range(args.repeats):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            out[key][2].append(run[key]())
    if not args.same_process:
        for key in keys:
            pipes[key][0].send(False)
        for proc in procs:
            proc.join()
    return out


def bench_shape(name: str, args: argparse.Namespace) -> list[list[str]]:
    keys = ["HF eager", "HF sdpa", "x_attn"]
    results = _rounds(name, args, keys)
    params = max(r[0] for r in results.values())
    same = all(torch.equal(r[1], results["x_attn"][1]) for r in results.values())
    fwd = {k: median([f for f, _ in results[k][2]]) for k in keys}
    dec = {k: median([d for _, d in results[k][2]]) for k in keys}
    rows = []
    for key in keys:
        rows.append(
            [
                name,
                f"{params / 1e6:.1f}M",
                key,
                f"{fwd[key]:,.0f}",
                f"{fwd[key] / fwd['HF sdpa']:.2f}",
                f"{dec[key]:,.1f}",
                f"{dec[key] / dec['HF sdpa']:.2f}",
                "yes" if same else "NO",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=256, help="forward block length")
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=32, help="tokens decoded")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument(
        "--no-mmap",
        action="store_true",
        help="the candidates' processes run glibc malloc without mmap, freed memory kept",
    )
    parser.add_argument(
        "--same-process",
        action="store_true",
        help="time every candidate in this process (by default each runs in its own)",
    )
    args = parser.parse_args()
    if args.no_mmap:
        if args.same_process:
            parser.error("--no-mmap acts on the candidates' own processes: drop --same-process")
        os.environ.update(NO_MMAP)  # read by glibc when each spawned worker starts
    torch.set_grad_enabled(False)
    rows = [row for name in args.shapes for row in bench_shape(name, args)]
    headers = ["config", "params", "model", "forward tok/s", "vs HF sdpa", "decode tok/s"]
    headers += ["vs HF sdpa", "same tokens"]
    where = "all in one process" if args.same_process else "each candidate in its own process"
    where += ", glibc mmap off" if args.no_mmap else ""
    print(
        f"batch {args.batch}, forward seq {args.seq}, decode {args.new} tokens after a "
        f"{args.prompt}-token prompt (KV cache), CPU float32, median of {args.repeats} "
        f"interleaved repeats, {where}; transformers {transformers.__version__}\n"
    )
    print(markdown_table(headers, rows))
    print("\n" + "\n".join(machine_lines(torch.device("cpu"))))


if __name__ == "__main__":
    main()
