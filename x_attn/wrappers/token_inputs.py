"""TransformerWrapper's input steps: token ids checked, the cache's new tokens, looping options,
recycling runs, the embeddings.

A mixin of :class:`x_attn.wrappers.token.TransformerWrapper` (it reads the vocabulary size, the
stack, the embeddings and the recycling projection the wrapper builds); the cache cut is
:mod:`x_attn.wrappers.cache_input`, recycling :mod:`x_attn.wrappers.recycling`, looping
:mod:`x_attn.wrappers.looped`.

Shape legend: b batch, n sequence, e embedding dim.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from x_attn.validation_inputs import check_bool_mask, token_ids
from x_attn.value_checks import require_ids_below
from x_attn.wrappers.cache_input import new_inputs, new_positions
from x_attn.wrappers.looped import loop_options
from x_attn.wrappers.recycling import add, check_single_run_inputs, recycle_count
from x_attn.wrappers.token_io import add_extra_embeds, embed_tokens


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
        kwargs: dict[str, Any],
    ):
        """The cache, the tokens it has not seen, their mask, and (embed_ids, sum_embeds)
        cut to those tokens when ``x`` was the whole sequence (:mod:`.cache_input`); the stack
        keywords ``kwargs`` given per position are checked against the new tokens."""
        n_given = x.shape[1]
        layers = self.attn_layers.num_cache_entries
        cache, x, mask = new_inputs(
            type(self).__name__, cache, x, mask, not_include, layers, returns_cache
        )
        new_positions(type(self).__name__, kwargs, n_given, x.shape[1])
        held = n_given - x.shape[1]  # tokens of a whole sequence the cache already holds
        embed_ids, sum_embeds = per_token
        if held and embed_ids:
            embed_ids = {k: _new_part(v, held, n_given) for k, v in embed_ids.items()}
        return cache, x, mask, (embed_ids, _new_part(sum_embeds, held, n_given))

    def _loop(self, options: dict[str, Any], mems: Any, prepend_embeds: Any) -> Any:
        """The ``looped_*`` keywords ``options`` checked (None: not a looped model), refusing
        the inputs a looped run cannot take (:mod:`x_attn.wrappers.looped`)."""
        loop = loop_options(self.looped, self.train_max_looped_steps, self.training, options)
        if loop is not None:
            loop = loop.refusing(mems=mems, prepend_embeds=prepend_embeds)
        return loop

    def _recycled_sum(
        self,
        x: Tensor,
        mask: Tensor | None,
        steps: int | None,
        per_token: tuple[Tensor | None, dict[str, Tensor] | None, dict[str, Any] | None],
        single_run: tuple[Any, Any, bool, bool, Any],
        kwargs: dict[str, Any],
    ) -> Tensor | None:
        """``sum_embeds`` (first of ``per_token``: sum_embeds, embed_ids, token_emb_kwargs)
        with the recycled embeddings of a recycling model, after refusing the inputs of one
        run only (``single_run``: cache, mems, return_cache, return_mems, prepend_embeds);
        ``recycle_steps`` is refused on other models."""
        sum_embeds, embed_ids, emb_kwargs = per_token
        if self.recycled_proj is None:
            if steps is not None:
                raise ValueError("TransformerWrapper: recycle_steps= needs recycling=True")
            return sum_embeds
        cache, mems, return_cache, return_mems, prepend_embeds = single_run
        check_single_run_inputs(
            "TransformerWrapper",
            cache=cache,
            mems=mems,
            return_cache=return_cache,
            return_mems=return_mems,
            prepend_embeds=prepend_embeds,
        )
        return self._recycled(x, mask, steps, sum_embeds, embed_ids, emb_kwargs, kwargs)

    def _embed_tokens(
        self,
        x: Tensor,
        embed_ids: dict[str, Tensor] | None,
        emb_kwargs: dict[str, Any] | None,
        kwargs: dict[str, Any],
    ) -> Tensor:
        """(b, n) ids -> (b, n, e): the token and ``embed_ids`` embeddings; ff_deep_embed's
        table and the ids join the stack keywords ``kwargs``."""
        if self.ff_deep_embed is not None:
            kwargs["deep_embeds_and_ids"] = (self.ff_deep_embed, x)
        h = embed_tokens(self.token_emb, x, self.l2norm_embed, emb_kwargs)
        return add_extra_embeds(h, self.embeds, embed_ids)

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
