"""Tiny float64 decoders built from registry flag cases, shared by the decoding tests.

Parameters are jittered after initialisation so that parts initialised to zero or identity
(ReZero, gates, talking heads) are active and the invariants cannot hold trivially.
"""

from __future__ import annotations

import torch
from torch import Tensor

from x_attn import Decoder, TransformerWrapper
from x_attn.registry import FLAGS, FlagCase

VOCAB, DIM = 24, 16
DIMS = dict(dim=DIM, depth=2, heads=2, attn_dim_head=8)
RELATIVE = tuple(case.name for case in FLAGS if case.relative)  # each is a stack flag


def build(
    case: FlagCase,
    max_seq_len: int = 32,
    relative: bool = False,
    max_mem_len: int = 0,
    **extra,
) -> TransformerWrapper:
    """Eval-mode float64 TransformerWrapper(Decoder) with ``case``'s flags (+ ``extra``).

    ``relative=True`` adds rotary positions when the case has no relative scheme of its own.
    """
    torch.manual_seed(0)
    layers = {**case.layers, **extra}
    if relative and not any(layers.get(k) for k in RELATIVE):
        layers["rotary_pos_emb"] = True
    net = TransformerWrapper(
        num_tokens=VOCAB,
        max_seq_len=max_seq_len,
        max_mem_len=max_mem_len,
        attn_layers=Decoder(**{**DIMS, **layers}),
        **case.wrapper,
    )
    net = net.double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net


def tokens(b: int, n: int, seed: int = 1) -> Tensor:
    """(b, n) token ids from a seeded generator."""
    return torch.randint(0, VOCAB, (b, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def prefill_then_steps(model: TransformerWrapper, ids: Tensor, prefill: int, **kwargs):
    """(logits of a prefill of ``prefill`` tokens then one token per call with the cache,
    concatenated; the final cache). ``kwargs`` reach every call (e.g. ``context``)."""
    logits, cache = model(ids[:, :prefill], return_cache=True, **kwargs)
    steps = [logits]
    for t in range(prefill, ids.shape[1]):
        step, cache = model(ids[:, t : t + 1], cache=cache, return_cache=True, **kwargs)
        steps.append(step)
    return torch.cat(steps, dim=1), cache
