"""Next-token logits for a batch of growing sequences whose rows can be re-chosen (beams).

A :class:`LogitStepper` prefills the prompts, then appends one token per row per step and
returns the logits of the new last position. Before a step the rows may be re-chosen
(``parents``: row ``i`` continues old row ``parents[i]``), which reorders the KV cache with
:meth:`x_attn.cache.KVCache.select` (a copy), or the token history when decoding without a cache.
The model inputs with one row per prompt (``context``, ``context_mask``, ``prepend_embeds``,
``prepend_mask``) follow the rows.

The cached and uncached paths give the same logits: both use the prompt padding mask, the
positions of left-padded rows (``seq_start_pos``) and, past ``max_seq_len`` with
``restrict_to_max_seq_len``, the same sliding window as generate.

Shape legend: r rows (batch x beams), p prompt length, t tokens so far, v vocabulary.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from x_attn.wrappers.decoding import PromptBatch

# embeddings before the prompt: a sequence wrapper places them once, the cache then holds them
PREPEND_INPUTS = frozenset({"prepend_embeds", "prepend_mask"})
# model inputs with one row per sequence
PER_ROW = frozenset({"context", "context_mask", "seq_start_pos"}) | PREPEND_INPUTS


class LogitStepper:
    """Drives ``wrapper.net`` one token at a time over rows that may be re-chosen.

    Args:
        wrapper: the AutoregressiveWrapper (its net, sliding-window helpers).
        batch: the left-padded prompts.
        kwargs: model inputs (tensors with one row per prompt follow the rows).
        cached: decode with the KV cache.
        restrict: slide a window of ``max_seq_len`` positions once the sequence is longer.
    """

    def __init__(
        self, wrapper: Any, batch: PromptBatch, kwargs: dict, cached: bool, restrict: bool
    ) -> None:
        self.wrapper, self.net, self.cached, self.restrict = wrapper, wrapper.net, cached, restrict
        self.rows = batch.tokens.shape[0]
        self.tokens, self.mask = batch.tokens, batch.mask
        self.kwargs = dict(kwargs)
        if batch.start is not None:
            self.kwargs["seq_start_pos"] = batch.start
        self.cache = None
        # only the last position's logits are read: a net that can say so skips the rest
        takes = "logits_to_keep" in inspect.signature(self.net.forward).parameters
        self.last_only = {"logits_to_keep": 1} if takes and "logits_to_keep" not in kwargs else {}
        # the sliding window: newest keys kept before a step, by the self-attention entries
        self.keep = wrapper._window - 1
        self.sliding = wrapper._self_attention_entries() if restrict and cached else []

    def first(self) -> Tensor:
        """(r, v) logits after the prompts."""
        if not self.cached:
            return self._full()
        logits, self.cache = self.net(
            self.tokens,
            mask=self.mask,
            attn_mask=self._band(self.tokens.shape[1]),
            return_cache=True,
            **self.last_only,
            **self.kwargs,
        )
        return logits[:, -1]

    def reorder(self, parents: Tensor) -> None:
        """Row ``i`` continues old row ``parents[i]`` (r_new,) -- also growing the rows."""
        self.tokens = self.tokens[parents]
        self.mask = None if self.mask is None else self.mask[parents]
        self.kwargs = {
            k: v[parents] if k in PER_ROW and isinstance(v, Tensor) else v
            for k, v in self.kwargs.items()
        }
        if self.cache is not None:
            self.cache = self.cache.select(parents)
        self.rows = parents.shape[0]

    def step(self, token: Tensor) -> Tensor:
        """Append ``token`` (r,) to every row; (r, v) logits of the new position."""
        self.tokens = torch.cat((self.tokens, token.unsqueeze(-1)), dim=1)
        if self.mask is not None:
            self.mask = torch.cat((self.mask, self.mask.new_ones(self.rows, 1)), dim=1)
        if not self.cached:
            return self._full()
        if self.restrict and self.cache.length > self.keep:  # no layer holds more before
            self.cache.slide(self.keep, self.sliding)
        logits, self.cache = self.net(
            token.unsqueeze(-1), cache=self.cache, return_cache=True, **self.kwargs
        )
        return logits[:, -1]

    def _full(self) -> Tensor:
        logits = self.net(
            self.tokens,
            mask=self.mask,
            attn_mask=self._band(self.tokens.shape[1]),
            **self.last_only,
            **self.kwargs,
        )
        return logits[:, -1]

    def _band(self, n: int) -> Tensor | None:
        return self.wrapper._band(n, self.tokens.device) if self.restrict else None
