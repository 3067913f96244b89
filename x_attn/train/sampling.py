"""Generating text from a trained character model, any positional scheme, any length.

Shape legend: n tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from x_attn.data.text import CharVocab
from x_attn.wrappers.autoregressive import AutoregressiveWrapper

__all__ = ["default_prompt", "generate_text"]


def default_prompt(vocab: CharVocab) -> str:
    """A newline (the start of a speech) when the vocabulary has one, else its first character."""
    return "\n" if "\n" in vocab.chars else vocab.chars[0]


@torch.no_grad()
def generate_text(
    model: nn.Module,
    vocab: CharVocab,
    prompt: str,
    length: int,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed: int = 0,
) -> str:
    """``length`` characters sampled after ``prompt`` (the prompt is not repeated).

    Models with learned absolute positions only know ``max_seq_len`` positions, so they generate
    in rounds, each conditioned on the newest half-context (as nanoGPT crops its context);
    relative positions slide over the KV cache inside ``AutoregressiveWrapper.generate``.
    """
    if not prompt:
        raise ValueError("--prompt must not be empty")
    if length < 1:
        raise ValueError(f"--length must be >= 1, got {length}")
    ids = vocab.encode(prompt).to(next(model.parameters()).device)
    wrapper = AutoregressiveWrapper(model)
    generator = torch.Generator(device=ids.device).manual_seed(seed)
    options = {"temperature": temperature, "generator": generator}
    options.update({"filter_kwargs": {"k": top_k}} if top_k else {"filter_logits_fn": None})
    if not getattr(model, "has_abs_positions", False):
        return vocab.decode(wrapper.generate(ids, length, **options))
    limit, keep = model.max_seq_len, max(1, model.max_seq_len // 2)
    out = ids[-limit:]
    while len(out) < len(ids[-limit:]) + length:
        window = out[-keep:] if len(out) >= limit else out
        room = min(limit - len(window) + 1, len(ids[-limit:]) + length - len(out))
        out = torch.cat((out, wrapper.generate(window, room, **options)))
    return vocab.decode(out[len(ids[-limit:]) :])
