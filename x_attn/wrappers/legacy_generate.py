"""The 2021 x-transformers ``generate`` signature, translated to the current one.

2021: ``generate(start_tokens, seq_len, eos_token=None, temperature=1., filter_logits_fn=top_k,
filter_thres=0.9, min_p_pow=2.0, min_p_ratio=0.02, mask=None, **kwargs)``:

* ``start_tokens`` is ``prompts``;
* ``filter_thres`` is the threshold of top-k (keep ``ceil((1 - thres) * vocab)`` tokens, i.e.
  ``filter_kwargs={"frac_num_tokens": 1 - thres}``) and of top-p (``{"thres": thres}``), and is
  handed as ``thres=`` to a custom filter function;
* ``min_p_pow`` / ``min_p_ratio`` configure top-a;
* ``filter_logits_fn=entmax.entmax15`` (the 2021 way to ask for entmax sampling) is
  ``entmax_alpha=1.5`` without a filter;
* ``mask`` (b, p) marks the real prompt tokens (one contiguous run per row): it becomes a
  list of prompts of different lengths.

Passing both spellings of one option is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import entmax
import torch
from torch import Tensor

from x_attn.wrappers.sampling import FILTERS


@dataclass
class Sampling:
    """generate()'s sampling options after translation."""

    prompts: Any
    filter_logits_fn: str | Callable | None
    filter_kwargs: dict | None
    entmax_alpha: float | None


def translate(
    owner: str,
    prompts: Any,
    start_tokens: Any,
    filter_logits_fn: str | Callable | None,
    filter_kwargs: dict | None,
    entmax_alpha: float | None,
    legacy: dict[str, Any],
) -> Sampling:
    """Apply the 2021 keywords in ``legacy`` (filter_thres, min_p_pow, min_p_ratio, mask)."""
    if (prompts is None) == (start_tokens is None):
        raise TypeError(f"{owner}: pass the prompts once, as 'prompts' or as 'start_tokens'")
    prompts = start_tokens if prompts is None else prompts
    if legacy.get("mask") is not None:
        prompts = _prompts_from_mask(prompts, legacy["mask"], owner)
    if filter_logits_fn is entmax.entmax15:
        if entmax_alpha not in (None, 1.5):
            raise ValueError(f"{owner}: filter_logits_fn=entmax15 and entmax_alpha disagree")
        filter_logits_fn, entmax_alpha = None, 1.5
    extra = _legacy_filter_kwargs(filter_logits_fn, legacy, owner)
    if extra and filter_kwargs:
        raise ValueError(
            f"{owner}: give the filter's options once, either as filter_kwargs or with the 2021 "
            f"keywords {sorted(k for k in legacy if k != 'mask')}"
        )
    return Sampling(prompts, filter_logits_fn, extra or filter_kwargs, entmax_alpha)


def _legacy_filter_kwargs(fn: str | Callable | None, legacy: dict, owner: str) -> dict:
    thres, pow_, ratio = (legacy.get(k) for k in ("filter_thres", "min_p_pow", "min_p_ratio"))
    name = next((n for n, f in FILTERS.items() if fn is f or fn == n), None)
    if thres is not None:
        if name == "top_k":
            return {"frac_num_tokens": 1.0 - thres}
        if name == "top_p" or (name is None and callable(fn)):
            return {"thres": thres}
        raise ValueError(
            f"{owner}: 'filter_thres' is the threshold of top_k / top_p (or of a custom filter "
            f"taking thres=), not of {fn!r}"
        )
    if pow_ is not None or ratio is not None:
        if name != "top_a":
            raise ValueError(f"{owner}: 'min_p_pow' / 'min_p_ratio' configure top_a only")
        return {k: v for k, v in (("min_p_pow", pow_), ("min_p_ratio", ratio)) if v is not None}
    return {}


def _prompts_from_mask(prompts: Any, mask: Any, owner: str) -> list[Tensor]:
    """(b, p) prompts + (b, p) mask of real tokens -> list of 1-D prompts."""
    if not isinstance(prompts, Tensor) or prompts.ndim != 2:
        raise ValueError(f"{owner}: 'mask' goes with (batch, p) prompts")
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != prompts.shape:
        raise ValueError(f"{owner}: 'mask' must be a bool tensor of the prompts' shape")
    rows = []
    for i, row in enumerate(mask):
        where = row.nonzero().flatten()
        if where.numel() == 0 or where[-1] - where[0] + 1 != where.numel():
            raise ValueError(
                f"{owner}: 'mask' row {i} must mark one contiguous, non-empty run of real "
                "prompt tokens (left or right padding)"
            )
        rows.append(prompts[i, where])
    return rows
