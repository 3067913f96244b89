"""Beam search for AutoregressiveWrapper (x-transformers ``beam_search`` semantics).

Each row keeps ``beams`` hypotheses. A hypothesis' score is the sum of the log-probabilities
(log-softmax of the raw logits, temperature 1, unfiltered) of its generated tokens. At every
step each hypothesis proposes ``min(beams, vocab)`` next tokens -- its most likely ones, or with
``stochastic=True`` (and temperature > 0) a Gumbel-top-k draw from the tempered, filtered
logits (Kool et al., "Stochastic Beams and Where to Find Them", arXiv 1903.06059) -- and the
``beams`` best scoring extensions of the row survive. With ``eos_token`` a hypothesis that
emitted it is finished: it continues with ``pad_value`` at no cost, so its score is final.

A row starts from one hypothesis (the other slots score -inf and never win), so with
``beams >= vocab ** (seq_len - 1)`` the search is exhaustive.

Shape legend: b batch, k beams, c candidates per beam, t generated tokens, v vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from einops import rearrange, repeat
from torch import Tensor

from x_attn.utils import check_positive_int
from x_attn.wrappers.sampling import gumbel_noise, resolve_filter
from x_attn.wrappers.stepper import LogitStepper

NEG_INF = float("-inf")


class BeamProposer:
    """Candidate tokens of each hypothesis: top log-probabilities, or Gumbel-top-k samples."""

    def __init__(
        self,
        beams: int,
        temperature: float,
        stochastic: bool,
        filter_fn: Callable | None,
        filter_kwargs: dict,
        generator: torch.Generator | None,
    ) -> None:
        self.beams, self.temperature, self.stochastic = beams, temperature, stochastic
        self.filter_fn, self.filter_kwargs, self.generator = filter_fn, filter_kwargs, generator

    def __call__(self, logits: Tensor, log_probs: Tensor) -> tuple[Tensor, Tensor]:
        """(r, v) -> candidates (r, c) and their log-probabilities (-inf if filtered out)."""
        c = min(self.beams, logits.shape[-1])
        if not self.stochastic or self.temperature == 0:
            chosen = log_probs.topk(c, dim=-1)
            return chosen.indices, chosen.values
        scores = logits / self.temperature
        if self.filter_fn is not None:
            scores = self.filter_fn(scores, **self.filter_kwargs)
        perturbed = scores + gumbel_noise(scores.shape, scores, self.generator)
        candidates = perturbed.topk(c, dim=-1).indices
        values = log_probs.gather(-1, candidates)
        return candidates, values.masked_fill(scores.gather(-1, candidates) == NEG_INF, NEG_INF)


def search(
    stepper: LogitStepper,
    seq_len: int,
    beams: int,
    proposer: BeamProposer,
    eos_token: int | None,
    pad_value: int,
) -> tuple[Tensor, Tensor]:
    """Run the search; returns tokens (b, k, t) and scores (b, k), best first."""
    b, device = stepper.rows, stepper.tokens.device
    logits = stepper.first()  # prefill once per row, then copy the cache to the beams
    dtype = torch.promote_types(logits.dtype, torch.float32)
    scores = torch.full((b, beams), NEG_INF, device=device, dtype=dtype)
    scores[:, 0] = 0.0  # one live hypothesis per row to start with
    expand = repeat(torch.arange(b, device=device), "b -> (b k)", k=beams)
    stepper.reorder(expand)
    logits, generated = logits[expand], []
    finished = torch.zeros(b * beams, dtype=torch.bool, device=scores.device)
    for step in range(seq_len):
        logits = logits.to(dtype)
        log_probs = logits.log_softmax(dim=-1)
        if eos_token is not None:
            log_probs = _freeze_finished(log_probs, finished, pad_value)
            logits = torch.where(finished.unsqueeze(-1), log_probs, logits)
        candidates, values = proposer(logits, log_probs)
        parents, tokens, scores = _select(scores, candidates, values, beams)
        generated = [g[parents] for g in generated] + [tokens]
        if eos_token is not None:
            finished = finished[parents] | (tokens == eos_token)
        if step == seq_len - 1 or (eos_token is not None and bool(finished.all())):
            break
        stepper.reorder(parents)
        logits = stepper.step(tokens)
    out = rearrange(torch.stack(generated, dim=1), "(b k) t -> b k t", b=b)
    return out, scores


def _freeze_finished(log_probs: Tensor, finished: Tensor, pad_value: int) -> Tensor:
    """Finished hypotheses continue only with ``pad_value``, at log-probability 0."""
    if not bool(finished.any()):
        return log_probs
    frozen = torch.full_like(log_probs, NEG_INF)
    frozen[:, pad_value] = 0.0
    return torch.where(finished.unsqueeze(-1), frozen, log_probs)


def _select(
    scores: Tensor, candidates: Tensor, values: Tensor, beams: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Keep the ``beams`` best extensions of each row.

    Args:
        scores: (b, k) current scores.
        candidates: (b k, c) proposed tokens; values: (b k, c) their log-probabilities.

    Returns:
        parents (b k,) flat row each survivor extends, tokens (b k,), new scores (b, k).
    """
    b, c = scores.shape[0], candidates.shape[-1]
    total = rearrange(scores, "b k -> (b k) 1") + values
    total = rearrange(total, "(b k) c -> b (k c)", b=b)
    best, index = total.topk(beams, dim=-1)  # sorted, best first
    parents = index // c + torch.arange(b, device=index.device).unsqueeze(-1) * beams
    flat_parents = rearrange(parents, "b k -> (b k)")
    tokens = candidates.flatten()[flat_parents * c + rearrange(index % c, "b k -> (b k)")]
    return flat_parents, tokens, best


def make_proposer(
    beams: int,
    temperature: float,
    stochastic: bool,
    filter_logits_fn: str | Callable | None,
    filter_kwargs: dict | None,
    generator: torch.Generator | None,
) -> BeamProposer:
    """Checked :class:`BeamProposer` from beam_search's options."""
    owner = "AutoregressiveWrapper.beam_search"
    check_positive_int("beams", beams, owner)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"{owner}: 'temperature' must be a float, got {temperature!r}")
    if temperature < 0:
        raise ValueError(f"{owner}: 'temperature' must be >= 0, got {temperature}")
    if not isinstance(stochastic, bool):
        raise TypeError(f"{owner}: 'stochastic' must be True or False, got {stochastic!r}")
    if filter_kwargs is not None and not isinstance(filter_kwargs, dict):
        raise TypeError(f"{owner}: 'filter_kwargs' must be a dict, got {filter_kwargs!r}")
    filter_fn = resolve_filter(filter_logits_fn)
    if (filter_fn is not None or filter_kwargs) and not stochastic:
        raise ValueError(
            f"{owner}: filter_logits_fn / filter_kwargs shape the candidates of stochastic "
            "beam search only; pass stochastic=True or drop them"
        )
    return BeamProposer(
        beams, float(temperature), stochastic, filter_fn, filter_kwargs or {}, generator
    )


def check_eos(eos_token: Any, vocab: int | None, owner: str) -> None:
    if eos_token is None:
        return
    if isinstance(eos_token, bool) or not isinstance(eos_token, int):
        raise TypeError(f"{owner}: 'eos_token' must be an int, got {eos_token!r}")
    if eos_token < 0 or (vocab is not None and eos_token >= vocab):
        raise ValueError(
            f"{owner}: 'eos_token' must be a token id in [0, {vocab}), got {eos_token}"
        )
