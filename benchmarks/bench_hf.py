"""Imported x_attn model vs the Hugging Face original: forward and cached-decode tokens/s.

For a tiny Llama and a ~100M-parameter Llama-shaped config (both built locally, random
weights), times the x_attn model made by ``x_attn.interop.from_hf`` next to the Hugging Face
model with ``attn_implementation="eager"`` and ``"sdpa"``, CPU float32, in one run:

* forward: three full forwards of a (batch, seq) block, tokens/s = 3 * batch * seq / seconds;
* decode: greedy generation of ``--new`` tokens after a ``--prompt``-token prompt with the KV
  cache (x_attn ``AutoregressiveWrapper.generate(temperature=0)``, Hugging Face
  ``generate(do_sample=False)``), tokens/s = batch * new / seconds.

Repeats are interleaved (every candidate once per round, the order rotated from round to
round) and the table shows medians; a check first asserts that the candidates generate the
same tokens.

Run: python benchmarks/bench_hf.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import transformers  # noqa: E402
from common import machine_lines, markdown_table, median, time_calls  # noqa: E402

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


def bench_shape(name: str, args: argparse.Namespace) -> list[list[str]]:
    models = candidates(SHAPES[name])
    params = sum(p.numel() for p in models["x_attn"][0].parameters())
    vocab = SHAPES[name]["vocab_size"]
    x = torch.randint(1, vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    prompt = x[:, : args.prompt]
    outs = {k: decode(prompt, args.new) for k, (_, decode) in models.items()}
    same = all(torch.equal(o, outs["x_attn"]) for o in outs.values())
    fwd: dict[str, list[float]] = {k: [] for k in models}
    dec: dict[str, list[float]] = {k: [] for k in models}
    names = list(models)
    for r in range(args.repeats):  # interleaved, every candidate once per round, and the
        # order rotated each round so that none always runs after the same one
        for key in names[r % len(names) :] + names[: r % len(names)]:
            model, decode = models[key]
            fwd[key].append(
                3 * args.batch * args.seq / time_calls(forward_fn(model, x), 3, x.device)
            )
            seconds = time_calls(lambda d=decode: d(prompt, args.new), 1, x.device)
            dec[key].append(args.batch * args.new / seconds)
    rows = []
    for key in models:
        ratio = median(dec[key]) / median(dec["HF sdpa"])
        rows.append(
            [
                name,
                f"{params / 1e6:.1f}M",
                key,
                f"{median(fwd[key]):,.0f}",
                f"{median(fwd[key]) / median(fwd['HF sdpa']):.2f}",
                f"{median(dec[key]):,.1f}",
                f"{ratio:.2f}",
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
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    rows = [row for name in args.shapes for row in bench_shape(name, args)]
    headers = ["config", "params", "model", "forward tok/s", "vs HF sdpa", "decode tok/s"]
    headers += ["vs HF sdpa", "same tokens"]
    print(
        f"batch {args.batch}, forward seq {args.seq}, decode {args.new} tokens after a "
        f"{args.prompt}-token prompt (KV cache), CPU float32, median of {args.repeats} "
        f"interleaved repeats; transformers {transformers.__version__}\n"
    )
    print(markdown_table(headers, rows))
    print("\n" + "\n".join(machine_lines(torch.device("cpu"))))


if __name__ == "__main__":
    main()
