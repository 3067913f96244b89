"""Training aids of AutoregressiveWrapper.

``mask_prob``: forgetful causal masking (Liu et al., "Towards Better Few-Shot and Finetuning
Performance with Forgetful Causal Language Models", arXiv 2210.13432). While training, a random
``floor(mask_prob * n)`` of the n input positions (never the first, at most n - 1) are hidden as
keys from every self-attention layer; each position is still a query and still predicts its
next token, so the loss covers the whole sequence.

Shape legend: b batch, n input positions.
"""

from __future__ import annotations

import torch
from torch import Tensor


def forgetful_key_mask(b: int, n: int, prob: float, device: torch.device) -> Tensor:
    """(b, n) bool key mask, True = may be attended, with ``min(int(n * prob), n - 1)`` False."""
    hidden = min(int(n * prob), n - 1)
    scores = torch.rand(b, n, device=device)
    scores[:, 0] = -1.0  # the first token always stays visible
    keep = torch.ones(b, n, dtype=torch.bool, device=device)
    if hidden > 0:
        keep.scatter_(1, scores.topk(hidden, dim=-1).indices, False)
    return keep


def lens_mask(lens: Tensor, n: int, owner: str) -> Tensor:
    """(b,) lengths -> (b, n) mask of the real positions (True for positions < length)."""
    if not isinstance(lens, Tensor) or lens.ndim != 1 or lens.is_floating_point():
        raise TypeError(f"{owner}: 'lens' must be a (batch,) integer tensor of lengths")
    if bool(((lens < 1) | (lens > n)).any()):
        raise ValueError(f"{owner}: 'lens' must lie in [1, {n}], got {lens.tolist()}")
    return torch.arange(n, device=lens.device) < lens.unsqueeze(-1)
