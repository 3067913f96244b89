"""Pieces of :mod:`x_attn.wrappers.nonautoregressive`: schedules, corruption, one decoding round.

Shape legend: b batch, n sequence, v vocabulary, d model dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from x_attn.wrappers.sampling import gumbel_noise, top_k

NEG_INF = float("-inf")


def linear_schedule(t: Tensor) -> Tensor:
    """Fraction masked at time t: 1 - t."""
    return 1.0 - t


def cosine_schedule(t: Tensor) -> Tensor:
    """MaskGIT's cosine schedule cos(pi t / 2) (arXiv 2202.04200)."""
    return torch.cos(t * math.pi / 2)


def resolve_schedule(schedule: str | Callable, owner: str) -> Callable[[Tensor], Tensor]:
    if callable(schedule):
        return schedule
    known = {"linear": linear_schedule, "cosine": cosine_schedule}
    if schedule not in known:
        raise ValueError(f"{owner}: 'schedule' must be 'linear', 'cosine' or a callable")
    return known[schedule]


def mdlm_weight(schedule: Callable[[Tensor], Tensor], times: Tensor) -> Tensor:
    """(b,) MDLM loss weights |gamma'(t)| / gamma(t) of a decreasing masking schedule gamma."""
    t = times.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        gamma = schedule(t)
        (slope,) = torch.autograd.grad(gamma.sum(), t)
    tiny = torch.finfo(gamma.dtype).eps
    return (slope.abs() / gamma.detach().clamp(min=tiny)).detach()


def _subset(mask: Tensor, prob: float) -> Tensor:
    """A random ``ceil(prob * count)`` of each row's True positions."""
    count = torch.ceil(mask.sum(-1, keepdim=True) * prob)
    scores = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, 2.0)
    rank = scores.argsort(-1).argsort(-1)
    return mask & (rank < count)


def bert_corruption(
    x: Tensor, mask: Tensor, mask_id: int, no_replace: float, random_token: float, vocab: int
) -> Tensor:
    """Masked positions become ``mask_id``, except (each with probability 1/2 per batch) a
    ``no_replace`` fraction that keeps its token and a ``random_token`` fraction of the rest
    that gets a random token."""
    replace, left = mask.clone(), 1.0
    if no_replace > 0 and bool(torch.rand(()) < 0.5):
        replace &= ~_subset(mask, no_replace)
        left -= no_replace
    if random_token > 0 and bool(torch.rand(()) < 0.5):
        rand = _subset(replace, random_token * left)
        x = torch.where(rand, torch.randint(0, vocab, x.shape, device=x.device), x)
        replace &= ~rand
    return x.masked_fill(replace, mask_id)


class SelfCritic(nn.Module):
    """A token critic on the generator's own embeddings: one logit per position."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.to_logits = nn.Linear(net.attn_layers.dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.to_logits(self.net(x, return_embeddings=True))


def unmask_step(
    wrapper: Any,
    logits: Tensor,
    seq: Tensor,
    mask: Tensor,
    count: int,
    anneal: float,
    start_temperature: float,
    filter_thres: float | None,
    noise_scale: float,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """One MaskGIT round: fill the masked positions, then re-mask ``count`` of them."""
    logits = logits.float().clone()
    logits[..., wrapper.mask_id] = NEG_INF  # never generate the mask token
    if filter_thres is not None:
        logits = top_k(logits, frac_num_tokens=1.0 - filter_thres)
    temperature = max(start_temperature * anneal, 1e-3)
    sampled = (logits / temperature + gumbel_noise(logits.shape, logits, generator)).argmax(-1)
    seq = torch.where(mask, sampled, seq)
    if wrapper.token_critic is not None:
        scores = wrapper.token_critic(seq).squeeze(-1).float()
        scores = scores + noise_scale * anneal * gumbel_noise(scores.shape, scores, generator)
    else:
        scores = 1.0 - logits.softmax(-1).gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
    if not wrapper.can_mask_prev_unmasked:
        scores = scores.masked_fill(~mask, NEG_INF)
    remask = torch.zeros_like(mask)
    if count > 0:
        remask.scatter_(1, scores.topk(count, dim=-1).indices, True)
    return seq.masked_fill(remask, wrapper.mask_id), remask
