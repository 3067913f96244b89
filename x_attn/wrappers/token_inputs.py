"""TransformerWrapper's input steps: token ids checked, the cache's new tokens, recycling runs.

A mixin of :class:`x_attn.wrappers.token.TransformerWrapper` (it reads the vocabulary size, the
stack and the recycling projection the wrapper builds); the cache cut is
:mod:`x_attn.wrappers.cache_input`, recycling :mod:`x_attn.wrappers.recycling`.

Shape legend: b batch, n sequence.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from x_attn.validation_inputs import check_bool_mask, token_ids
from x_attn.value_checks import require_ids_below
from x_attn.wrappers.cache_input import new_inputs
from x_attn.wrappers.recycling import add, recycle_count


class TokenInputs:
    """Input steps of ``TransformerWrapper.forward`` (before the stack runs)."""

    def _check_tokens(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """Token ids (b, n) in range, as an integer tensor; float ids of integral values cast."""
        x = token_ids(
            "x", x, type(self).__name__, "; for continuous inputs use ContinuousTransformerWrapper"
        )
        if x.ndim != 2:
            raise ValueError(f"'x' must have shape (batch, seq), got {tuple(x.shape)}")
        message = f"'x' holds token ids outside [0, num_tokens={self.num_tokens})"
        require_ids_below("x", x, self.num_tokens, message=message)
        check_bool_mask("mask", mask, tuple(x.shape), "batch x sequence, True = real token")
        return x

    def _new_inputs(
        self,
        x: Tensor,
        mask: Tensor | None,
        cache: Any,
        not_include: bool | None,
        returns_cache: bool,
        per_token: tuple[dict[str, Tensor] | None, Tensor | None],
    ):
        """The cache, the tokens it has not seen, their mask, and (embed_ids, sum_embeds)
        cut to those tokens when ``x`` was the whole sequence (:mod:`.cache_input`)."""
        n_given = x.shape[1]
        layers = self.attn_layers.num_cache_entries
        cache, x, mask = new_inputs(
            type(self).__name__, cache, x, mask, not_include, layers, returns_cache
        )
        held = n_given - x.shape[1]  # tokens of a whole sequence the cache already holds
        embed_ids, sum_embeds = per_token
        if held and embed_ids:
            embed_ids = {k: _new_part(v, held, n_given) for k, v in embed_ids.items()}
        return cache, x, mask, (embed_ids, _new_part(sum_embeds, held, n_given))

    def _recycled(self, x, mask, steps, sum_embeds, embed_ids, emb_kwargs, kwargs):
        """``sum_embeds`` plus R e of the run before the last (None for one run); the earlier
        runs take no gradient (see :mod:`x_attn.wrappers.recycling`)."""
        steps = recycle_count(steps, self.training, self.train_max_recycle_steps)
        recycled = None
        for _ in range(steps - 1):
            with torch.no_grad():
                e = self(
                    x,
                    return_embeddings=True,
                    mask=mask,
                    recycle_steps=1,
                    sum_embeds=add(sum_embeds, recycled),
                    embed_ids=embed_ids,
                    token_emb_kwargs=emb_kwargs,
                    **kwargs,
                )
            recycled = self.recycled_proj(e)
        return add(sum_embeds, recycled)


def _new_part(value: Any, held: int, n_given: int) -> Any:
    """``value`` (b, n_given, ...) without its first ``held`` positions; else unchanged."""
    if held and isinstance(value, Tensor) and value.ndim >= 2 and value.shape[1] == n_given:
        return value[:, held:]
    return value
