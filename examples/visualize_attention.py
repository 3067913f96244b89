"""Draw the attention of a model on a text: heatmaps, GIF, line view, pattern, HTML view.

Run: python examples/visualize_attention.py --checkpoint runs/default/checkpoint \
         --text "ROMEO:\nBut soft, what light"
     python examples/visualize_attention.py          (a fresh random model, for a quick look)

Writes heads.png, heads.gif, lines.png, support.png and attention.html into --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import x_attn
from x_attn import Decoder, TransformerWrapper
from x_attn.data.text import CharVocab
from x_attn.viz import (
    animate,
    attention_maps,
    plot_heads,
    plot_lines,
    plot_pattern,
    support_pattern,
    to_html,
)


def _model_and_ids(checkpoint: str | None, text: str):
    if checkpoint is None:
        torch.manual_seed(0)
        model = TransformerWrapper(
            num_tokens=256,
            max_seq_len=256,
            attn_layers=Decoder(dim=64, depth=2, heads=4, rotary_pos_emb=True),
        )
        return model, torch.tensor([[min(ord(c), 255) for c in text]])
    model = x_attn.load(checkpoint)
    vocab = CharVocab(x_attn.checkpoint.load_metadata(checkpoint)["vocab"])
    return model, vocab.encode(text)[None]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="a folder written by the main job (x-attn-train)")
    p.add_argument("--text", default="ROMEO:\nBut soft, what light through yonder window breaks?")
    p.add_argument("--out", default="runs/attention", help="output folder")
    p.add_argument("--max-tokens", type=int, default=64, help="pool longer texts in the HTML")
    args = p.parse_args(argv)
    try:
        model, ids = _model_and_ids(args.checkpoint, args.text.replace("\\n", "\n"))
        if ids.shape[1] > model.max_seq_len:
            raise ValueError(
                f"--text has {ids.shape[1]} characters; the model takes {model.max_seq_len}"
            )
        import matplotlib

        matplotlib.use("Agg")
    except (ValueError, ImportError) as error:
        print(f"visualize_attention: error: {error}", file=sys.stderr)
        return 2
    text = args.text.replace("\\n", "\n")
    maps = attention_maps(model, ids, list(text))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_heads(maps).savefig(out / "heads.png", dpi=80)
    animate(maps, out / "heads.gif")
    last = maps.layers - 1
    plot_lines(maps.weights[last, 0], maps.queries, maps.keys).figure.savefig(out / "lines.png")
    support = support_pattern(maps.weights[0, 0], threshold=0.01)
    plot_pattern(
        support, maps.queries, maps.keys, title="weights above 0.01, layer 0 head 0"
    ).figure.savefig(out / "support.png")
    to_html(maps, out / "attention.html", title="Attention", max_tokens=args.max_tokens)
    print(f"wrote heads.png, heads.gif, lines.png, support.png, attention.html to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
