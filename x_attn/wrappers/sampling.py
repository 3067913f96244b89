"""Logit filters and the sampling step of autoregressive generation.

Papers:
    * Top-k sampling: Fan et al., "Hierarchical Neural Story Generation", arXiv 1805.04833.
    * Nucleus (top-p) sampling: Holtzman et al., "The Curious Case of Neural Text
      Degeneration", arXiv 1904.09751.
    * Min-p sampling: Nguyen et al., "Turning Up the Heat: Min-p Sampling for Creative and
      Coherent LLM Outputs", arXiv 2407.01082.
    * Top-a sampling: threshold ``min_p_ratio * max_prob ** min_p_pow`` (BlinkDL, RWKV).
    * Entmax sampling: Martins et al., "Sparse Text Generation", arXiv 2004.02644, with
      alpha-entmax from Peters et al., arXiv 1905.05702.

Every filter maps logits to logits of the same shape and dtype, with removed tokens set to
``-inf``; the most likely token of each row is always kept, so a filtered row always has at
least one finite entry. Filters never modify their input in place.

Shape legend: b batch, v vocabulary (filters accept any leading dims ``(..., v)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import entmax
import torch
from torch import Tensor

from x_attn.utils import check_positive_int, exists

__all__ = [
    "FILTERS",
    "gumbel_noise",
    "min_p",
    "resolve_filter",
    "sample_next",
    "top_a",
    "top_k",
    "top_p",
]

NEG_INF = float("-inf")


# ------------------------------------------------------------------------------------------------
# validation helpers


def _check_logits(logits: Any, owner: str) -> None:
    """Raise TypeError/ValueError unless ``logits`` is a floating tensor with a vocab dim."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"{owner}: 'logits' must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(
            f"{owner}: 'logits' must be a floating point tensor, got {logits.dtype}; "
            "cast it with logits.float()"
        )
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(
            f"{owner}: 'logits' must have shape (..., vocab) with vocab >= 1, "
            f"got shape {tuple(logits.shape)}"
        )


def _check_real(name: str, value: Any, owner: str, low: float, high: float = math.inf) -> None:
    """Raise TypeError/ValueError unless ``value`` is a real number in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: '{name}' must be a float, got {type(value).__name__}")
    if not math.isfinite(value) or not low <= value <= high:
        bound = f"[{low}, {high}]" if math.isfinite(high) else f">= {low} and finite"
        raise ValueError(f"{owner}: '{name}' must be {bound}, got {value}")


# ------------------------------------------------------------------------------------------------
# helpers


def _work_dtype(logits: Tensor) -> Tensor:
    """``logits`` in float32 or better (half precision is upcast for the statistics)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        return logits.float()
    return logits


def _remove(logits: Tensor, remove: Tensor, log_probs: Tensor) -> Tensor:
    """Set ``remove`` entries to -inf, but always keep each row's most likely token.

    Args:
        logits: (..., v) the input logits (returned dtype).
        remove: (..., v) bool, True = drop the token.
        log_probs: (..., v) scores whose argmax is the token that must stay.
    """
    top = log_probs.argmax(dim=-1, keepdim=True)
    remove = remove.scatter(-1, top, False)
    return logits.masked_fill(remove, NEG_INF)


# ------------------------------------------------------------------------------------------------
# filters


def top_k(logits: Tensor, k: int | None = None, frac_num_tokens: float = 0.1) -> Tensor:
    """Keep the ``k`` largest logits of each row, set the others to -inf (arXiv 1805.04833).

    Exactly ``min(k, v)`` entries per row are kept, also when logits tie.

    Args:
        logits: (..., v) float logits.
        k: number of tokens to keep (>= 1); values above ``v`` keep every token.
            Defaults to ``ceil(frac_num_tokens * v)``.
        frac_num_tokens: fraction of the vocabulary kept when ``k`` is None, in (0, 1].

    Returns:
        (..., v) filtered logits, same dtype as ``logits``.
    """
    _check_logits(logits, "top_k")
    vocab = logits.shape[-1]
    if k is None:
        _check_real("frac_num_tokens", frac_num_tokens, "top_k", 0.0, 1.0)
        if frac_num_tokens == 0.0:
            raise ValueError("top_k: 'frac_num_tokens' must be > 0 so that k >= 1, got 0.0")
        k = math.ceil(frac_num_tokens * vocab)
    check_positive_int("k", k, "top_k")
    k = min(k, vocab)
    values, indices = logits.topk(k, dim=-1)
    return torch.full_like(logits, NEG_INF).scatter(-1, indices, values)


def top_p(logits: Tensor, thres: float = 0.9) -> Tensor:
    """Nucleus filter (Holtzman et al., arXiv 1904.09751).

    Keeps the smallest set of most likely tokens whose cumulative probability is >= ``thres``:
    a token is kept when the probability mass strictly above it (in sorted order) is < ``thres``,
    so the token that crosses the threshold is kept. The top token is always kept.

    Args:
        logits: (..., v) float logits.
        thres: cumulative probability to reach, in [0, 1]; 1 keeps every token with p > 0.

    Returns:
        (..., v) filtered logits, same dtype as ``logits``.
    """
    _check_logits(logits, "top_p")
    _check_real("thres", thres, "top_p", 0.0, 1.0)
    log_probs = _work_dtype(logits).log_softmax(dim=-1)
    sorted_log_probs, order = log_probs.sort(dim=-1, descending=True)
    sorted_probs = sorted_log_probs.exp()
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    remove_sorted = mass_before >= thres
    if thres >= 1.0:  # round-off must not drop tokens that still carry mass
        remove_sorted = sorted_probs <= 0
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return _remove(logits, remove, log_probs)


def min_p(logits: Tensor, min_p: float = 0.1) -> Tensor:
    """Min-p filter (Nguyen et al., arXiv 2407.01082): keep p >= ``min_p`` * max p.

    Computed in log space (``log p_i >= log p_max + log min_p``), so tiny probabilities that
    underflow in float32 are still compared exactly.

    Args:
        logits: (..., v) float logits.
        min_p: scale of the row's top probability, in [0, 1]; 0 keeps everything.

    Returns:
        (..., v) filtered logits, same dtype as ``logits``.
    """
    _check_logits(logits, "min_p")
    _check_real("min_p", min_p, "min_p", 0.0, 1.0)
    if min_p == 0.0:
        return logits.clone()
    log_probs = _work_dtype(logits).log_softmax(dim=-1)
    limit = log_probs.amax(dim=-1, keepdim=True) + math.log(min_p)
    return _remove(logits, log_probs < limit, log_probs)


def top_a(logits: Tensor, min_p_pow: float = 2.0, min_p_ratio: float = 0.02) -> Tensor:
    """Top-a filter: keep p >= ``min_p_ratio`` * (max p) ** ``min_p_pow``, per row.

    The row's most likely token is kept even when the threshold exceeds it
    (possible when ``min_p_pow < 1`` or ``min_p_ratio > 1``).

    Args:
        logits: (..., v) float logits.
        min_p_pow: exponent applied to the top probability, >= 0.
        min_p_ratio: scale of the powered top probability, >= 0; 0 keeps everything.

    Returns:
        (..., v) filtered logits, same dtype as ``logits``.
    """
    _check_logits(logits, "top_a")
    _check_real("min_p_pow", min_p_pow, "top_a", 0.0)
    _check_real("min_p_ratio", min_p_ratio, "top_a", 0.0)
    if min_p_ratio == 0.0:
        return logits.clone()
    log_probs = _work_dtype(logits).log_softmax(dim=-1)
    log_max = log_probs.amax(dim=-1, keepdim=True)
    limit = math.log(min_p_ratio) + min_p_pow * log_max
    return _remove(logits, log_probs < limit, log_probs)


FILTERS: dict[str, Callable[..., Tensor]] = {
    "top_k": top_k,
    "top_p": top_p,
    "min_p": min_p,
    "top_a": top_a,
}


def resolve_filter(filter_logits_fn: str | Callable | None) -> Callable | None:
    """Turn a filter name or callable into a callable (None stays None).

    Args:
        filter_logits_fn: a key of ``FILTERS``, a callable ``(logits, **kwargs) -> logits``,
            or None.

    Returns:
        The filter callable, or None.
    """
    if filter_logits_fn is None or callable(filter_logits_fn):
        return filter_logits_fn
    known = ", ".join(repr(name) for name in FILTERS)
    if isinstance(filter_logits_fn, str):
        if filter_logits_fn not in FILTERS:
            raise ValueError(
                f"resolve_filter: unknown filter_logits_fn {filter_logits_fn!r}; "
                f"use one of {known} or pass a callable"
            )
        return FILTERS[filter_logits_fn]
    raise TypeError(
        "resolve_filter: 'filter_logits_fn' must be a name, a callable or None, "
        f"got {type(filter_logits_fn).__name__}; known names: {known}"
    )


# ------------------------------------------------------------------------------------------------
# sampling


def _check_sample_args(
    logits: Any, temperature: Any, entmax_alpha: Any, filter_fn: Any, filter_kwargs: Any
) -> None:
    """Validate the arguments of :func:`sample_next` (raises ValueError/TypeError)."""
    owner = "sample_next"
    _check_logits(logits, owner)
    if logits.ndim != 2:
        raise ValueError(
            f"{owner}: 'logits' must have shape (batch, vocab), got {tuple(logits.shape)}; "
            "take the last position with logits[:, -1]"
        )
    _check_real("temperature", temperature, owner, 0.0)
    if exists(entmax_alpha):
        _check_real("entmax_alpha", entmax_alpha, owner, -math.inf)
        if entmax_alpha <= 1.0:
            raise ValueError(
                f"{owner}: 'entmax_alpha' must be > 1 (alpha = 1 is softmax), got {entmax_alpha}; "
                "pass entmax_alpha=None for softmax sampling"
            )
    if filter_kwargs and filter_fn is None:
        raise ValueError(
            f"{owner}: 'filter_kwargs' {filter_kwargs} given without 'filter_fn'; "
            f"pass filter_fn (one of {list(FILTERS)} or a callable) or drop filter_kwargs"
        )
    # a row's max (NaN propagates) is finite unless the row has NaN or +inf or is all -inf
    if not bool(torch.isfinite(logits.amax(dim=-1)).all()):
        raise ValueError(
            f"{owner}: 'logits' has NaN/+inf entries or a row that is all -inf; "
            "every row needs at least one finite logit"
        )


def _distribution(scores: Tensor, entmax_alpha: float | None) -> Tensor:
    """Row-wise probabilities (b, v): softmax, or alpha-entmax when ``entmax_alpha`` is set."""
    scores = scores - scores.amax(dim=-1, keepdim=True)  # keeps entmax bisection finite
    if entmax_alpha is None:
        return scores.softmax(dim=-1)
    if entmax_alpha == 1.5:
        return entmax.entmax15(scores, dim=-1)
    return entmax.entmax_bisect(scores, entmax_alpha, dim=-1)


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    filter_fn: Callable | str | None = None,
    filter_kwargs: dict | None = None,
    entmax_alpha: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick the next token of each row.

    ``temperature == 0`` is greedy (argmax; the filter is not applied). Otherwise the logits are
    divided by ``temperature``, filtered, and a token is drawn from softmax of the result, or
    from alpha-entmax of it when ``entmax_alpha`` is given (Martins et al., arXiv 2004.02644;
    ``entmax15`` for 1.5, ``entmax_bisect`` otherwise); entmax never draws a zero-probability
    token. Before division each row is shifted so its max is 0; softmax, entmax and all
    built-in filters are invariant to that shift, and it keeps tiny temperatures finite.

    Args:
        logits: (b, v) float logits of the last position.
        temperature: >= 0.
        filter_fn: a filter callable or a ``FILTERS`` name, or None.
        filter_kwargs: keyword arguments of ``filter_fn``.
        entmax_alpha: sample from alpha-entmax instead of softmax; must be > 1.
        generator: torch random generator for reproducible draws.

    Returns:
        (b,) long token ids.
    """
    filter_fn = resolve_filter(filter_fn)
    _check_sample_args(logits, temperature, entmax_alpha, filter_fn, filter_kwargs)
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    work = _work_dtype(logits)
    scores = (work - work.amax(dim=-1, keepdim=True)) / temperature
    if exists(filter_fn):
        scores = filter_fn(scores, **(filter_kwargs or {}))
        if bool((scores == NEG_INF).all(dim=-1).any() | torch.isnan(scores).any()):
            raise ValueError(
                "sample_next: 'filter_fn' removed every token of a row or produced NaN; "
                "a filter must keep at least one finite logit per row"
            )
    probs = _distribution(scores, entmax_alpha)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def gumbel_noise(
    shape: torch.Size, like: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Standard Gumbel samples ``-log(-log(u))``, u ~ U(0, 1), in ``like``'s dtype and device.

    ``argmax(logits / T + noise)`` is a draw from ``softmax(logits / T)`` (Gumbel-max).
    """
    u = torch.rand(shape, device=like.device, dtype=like.dtype, generator=generator)
    tiny = torch.finfo(like.dtype).tiny
    return -torch.log((-torch.log(u.clamp(min=tiny))).clamp(min=tiny))
