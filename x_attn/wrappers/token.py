"""TransformerWrapper: token embedding + positions + an attention stack + logits.

The shared core (positions, memory tokens, Transformer-XL mems, KV cache, pooling, packaging of
the extra returns) is :class:`x_attn.wrappers.sequence.SequenceWrapper`; this module adds the
token embedding and the logits head (:mod:`x_attn.wrappers.token_io`). The forward's input
steps (token checks, the cache's new tokens, recycling) are :mod:`x_attn.wrappers.token_inputs`;
its output assembly (pooling, embeddings / logits, the next-embedding head) is
:mod:`x_attn.wrappers.token_head`.

Shape legend: b batch, n sequence, d model dim, e embedding dim, v vocabulary, p prepended
positions.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from x_attn.cache import KVCache
from x_attn.compat import drop_unsupported
from x_attn.layers.deep_embed import deep_embed_table
from x_attn.layers.intermediates import keep_hiddens
from x_attn.layers.stack import AttentionLayers, LayerIntermediates
from x_attn.routing import checked_keywords
from x_attn.serialization import records_config
from x_attn.utils import check_positive_int, default
from x_attn.wrappers.cache_input import new_positions
from x_attn.wrappers.looped import check_looped, loop_options, run_loops
from x_attn.wrappers.mixture_of_softmax import MixtureOfSoftmax
from x_attn.wrappers.next_embed import build_next_embed_head
from x_attn.wrappers.pooling import AttentionPool, check_pooling
from x_attn.wrappers.recycling import (
    RecycledProjection,
    check_recycling,
    check_single_run_inputs,
)
from x_attn.wrappers.sequence import SequenceWrapper
from x_attn.wrappers.token_head import TokenHead
from x_attn.wrappers.token_inputs import TokenInputs
from x_attn.wrappers.token_io import (
    add_extra_embeds,
    build_extra_embeds,
    build_logits_head,
    build_token_embedding,
    check_tie,
    embed_tokens,
)

__all__ = ["SequenceWrapper", "TransformerWrapper"]


@records_config
class TransformerWrapper(TokenInputs, TokenHead, SequenceWrapper):
    """Token model around an :class:`AttentionLayers` stack.

    Args:
        num_tokens: vocabulary size.
        max_seq_len: longest sequence absolute positions cover.
        attn_layers: the stack (Encoder / Decoder / AttentionLayers).
        emb_dropout: dropout after the embeddings.
        use_abs_pos_emb: learned absolute positions; turned off automatically when the stack
            has relative positions (rotary, T5, ALiBi, position-infused), as in x-transformers.
        scaled_sinu_pos_emb: fixed sinusoids with a learned scale instead of a learned table.
        sinusoidal_pos_emb: the paper's fixed sinusoids (arXiv 1706.03762) instead of a table.
        tie_embedding: logits use the token embedding matrix, times ``tie_embedding_scale``
            (default ``dim ** -0.5``, as in x-transformers 2.31).
        logits_dim: output size (default num_tokens).
        num_memory_tokens: learned tokens prepended to every sequence (Memory Transformer,
            arXiv 2006.11527); stripped from the output.
        max_mem_len: Transformer-XL memory length kept by ``return_mems``.
        emb_dim, post_emb_norm, l2norm_embed, emb_frac_gradient: input embedding options
            (:mod:`x_attn.wrappers.embedding`); l2norm_embed also normalises token embeddings.
        embed_num_tokens: extra embedding tables ``{name: vocabulary}``, fed by ``embed_ids``.
        token_emb / to_logits: custom input embedding / output head modules.
        logits_bias: whether the built-in linear head has a bias; None (default) gives it one,
            as the 2021 x-transformers head had; False matches x-transformers 2.x and Hugging
            Face heads (``from_hf`` uses it). Refused with a tied or a custom head.
        average_pool_embed, use_cls_token, num_cls_tokens, attn_pool, num_pooled_tokens,
            attn_pool_depth, dim_pooled_tokens: pooling (:mod:`x_attn.wrappers.pooling`).
        squeeze_out_last_dim: drop a last logits axis of size 1 (``logits_dim=1`` regressors).
        mixture_of_softmax, mixture_of_softmax_k: the output is log P of a mixture of k
            softmaxes over the head (:mod:`x_attn.wrappers.mixture_of_softmax`).
        add_continuous_pred_head: a head predicting the next position's input embedding
            (:mod:`x_attn.wrappers.next_embed`), trained by AutoregressiveWrapper.
        ff_deep_embed: every feed-forward run scales its output by a learned vector of the
            token id (init ones; :mod:`x_attn.layers.deep_embed`).
        recycling, train_max_recycle_steps: run the model several times, each run reading a
            projection of the previous run's outputs (:mod:`x_attn.wrappers.recycling`).
        input_not_include_cache: with a cache, ``x`` holds only the new tokens (True) or the
            whole sequence so far (False); None: a KVCache takes new tokens, intermediates
            the whole sequence (see :mod:`x_attn.wrappers.cache_input`).
    """

    @checked_keywords
    def __init__(
        self,
        *,
        num_tokens: int,
        max_seq_len: int,
        attn_layers: AttentionLayers,
        emb_dropout: float = 0.0,
        use_abs_pos_emb: bool = True,
        scaled_sinu_pos_emb: bool = False,
        tie_embedding: bool = False,
        tie_embedding_scale: float | None = None,
        logits_dim: int | None = None,
        num_memory_tokens: int | None = None,
        max_mem_len: int = 0,
        sinusoidal_pos_emb: bool = False,
        emb_dim: int | None = None,
        post_emb_norm: bool = False,
        l2norm_embed: bool = False,
        emb_frac_gradient: float = 1.0,
        embed_num_tokens: dict[str, int] | None = None,
        token_emb: nn.Module | None = None,
        to_logits: nn.Module | None = None,
        logits_bias: bool | None = None,
        average_pool_embed: bool = False,
        use_cls_token: bool = False,
        num_cls_tokens: int = 1,
        attn_pool: bool = False,
        num_pooled_tokens: int = 1,
        attn_pool_depth: int = 1,
        dim_pooled_tokens: int | None = None,
        squeeze_out_last_dim: bool = False,
        input_not_include_cache: bool | None = None,
        mixture_of_softmax: bool = False,
        mixture_of_softmax_k: int = 4,
        add_continuous_pred_head: bool = False,
        ff_deep_embed: bool = False,
        recycling: bool = False,
        train_max_recycle_steps: int = 4,
        looped: bool = False,
        max_looped_steps: int = 4,
    ) -> None:
        super().__init__(
            max_seq_len=max_seq_len,
            attn_layers=attn_layers,
            emb_dropout=emb_dropout,
            use_abs_pos_emb=use_abs_pos_emb,
            scaled_sinu_pos_emb=scaled_sinu_pos_emb,
            num_memory_tokens=num_memory_tokens,
            max_mem_len=max_mem_len,
            sinusoidal_pos_emb=sinusoidal_pos_emb,
            emb_dim=emb_dim,
            post_emb_norm=post_emb_norm,
            l2norm_embed=l2norm_embed,
            emb_frac_gradient=emb_frac_gradient,
            average_pool_embed=average_pool_embed,
        )
        owner = "TransformerWrapper"
        check_positive_int("num_tokens", num_tokens, owner)
        pools = (average_pool_embed, use_cls_token, num_cls_tokens, attn_pool)
        check_pooling(owner, attn_layers, *pools)
        dim, emb_dim = attn_layers.dim, emb_dim or attn_layers.dim
        self.num_tokens, self.emb_dim = num_tokens, emb_dim
        self.token_emb = build_token_embedding(num_tokens, emb_dim, token_emb, l2norm_embed, owner)
        self.embeds = build_extra_embeds(embed_num_tokens, emb_dim, owner)
        check_tie(self.token_emb, dim, tie_embedding, owner)
        self.tie_embedding_scale = dim**-0.5 if tie_embedding_scale is None else tie_embedding_scale
        self.to_logits = build_logits_head(
            dim, num_tokens, logits_dim, tie_embedding, to_logits, owner, logits_bias
        )
        self.squeeze_out_last_dim = squeeze_out_last_dim
        if mixture_of_softmax and logits_dim == 1:
            raise ValueError(
                f"{owner}: mixture_of_softmax normalises over the logits, but logits_dim=1 has "
                "one (log P would always be 0); drop one of the two"
            )
        self.mixture = _mixture(mixture_of_softmax, mixture_of_softmax_k, dim)
        self.to_next_embed_pred = build_next_embed_head(dim) if add_continuous_pred_head else None
        self.input_not_include_cache = input_not_include_cache
        self._init_pooling(use_cls_token, num_cls_tokens)
        self.attn_pool = _attention_pool(
            attn_layers, attn_pool, num_pooled_tokens, attn_pool_depth, dim_pooled_tokens
        )
        self.ff_deep_embed = deep_embed_table(ff_deep_embed, num_tokens, attn_layers, owner)
        check_recycling(recycling, train_max_recycle_steps, owner)
        self.train_max_recycle_steps = train_max_recycle_steps
        self.recycled_proj = RecycledProjection(dim, emb_dim) if recycling else None
        if recycling and max_mem_len:
            raise ValueError(f"{owner}: max_mem_len (memories of one run) with recycling")
        if recycling and (self.pools or self.attn_pool is not None):
            raise ValueError(f"{owner}: recycling feeds back one output per token; drop pooling")
        check_looped(self, looped, max_looped_steps, owner)
        if looped and recycling:
            raise ValueError(f"{owner}: looped and recycling both rerun the stack; choose one")
        self.looped, self.train_max_looped_steps = looped, max_looped_steps
        self.exit_gate = nn.Linear(dim, 1, bias=False) if looped else None

    def _init_pooling(self, use_cls_token: bool, num_cls_tokens: int) -> None:
        if use_cls_token:
            self.cls_token = nn.Parameter(torch.randn(num_cls_tokens, self.attn_layers.dim) * 0.02)
        elif num_cls_tokens != 1:
            raise ValueError("TransformerWrapper: num_cls_tokens needs use_cls_token=True")

    def forward(
        self,
        x: Tensor,
        return_embeddings: bool = False,
        mask: Tensor | None = None,
        return_mems: bool = False,
        return_attn: bool = False,
        mems: list[Tensor] | None = None,
        cache: KVCache | LayerIntermediates | None = None,
        return_intermediates: bool = False,
        return_cache: bool = False,
        input_not_include_cache: bool | None = None,
        *,
        return_logits_and_embeddings: bool = False,
        prepend_embeds: Tensor | None = None,
        prepend_mask: Tensor | None = None,
        excise_prepend_embeds: bool = False,
        embed_ids: dict[str, Tensor] | None = None,
        sum_embeds: Tensor | None = None,
        token_emb_kwargs: dict[str, Any] | None = None,
        to_logits_kwargs: dict[str, Any] | None = None,
        logits_to_keep: int = 0,
        return_next_embed_pred: bool = False,
        recycle_steps: int | None = None,
        looped_steps: int | None = None,
        max_looped_steps: int | None = None,
        looped_pred_all_logits: bool | None = None,
        looped_inference: bool = False,
        looped_exit_prob_threshold: float | None = None,
        **kwargs: Any,
    ):
        """Logits (b, n, logits_dim), or embeddings (b, n, d) with ``return_embeddings``.

        With a cache (a :class:`KVCache`, or the intermediates of an earlier call as in
        x-transformers), only the tokens the cache has not seen run, and only their logits
        are returned; ``input_not_include_cache`` says whether ``x`` holds only those (see
        :mod:`x_attn.wrappers.cache_input`); ``embed_ids`` / ``sum_embeds`` given for the whole
        sequence are cut the same way. The cache passed is left as it was.
        ``return_next_embed_pred`` (with ``add_continuous_pred_head``): ``(output, (pred,
        inputs))``, see :mod:`x_attn.wrappers.next_embed`. ``logits_to_keep`` k > 0: the head
        runs on the last k positions only, so the logits are (b, k, logits_dim) (embeddings
        stay whole); a prefill that needs only the next token's logits skips the rest of the
        (n, vocabulary) product.

        Extra returns, in this order when asked: mems (``return_mems``, a :class:`Mems` with
        their padding), attention maps (``return_attn``), the KV cache (``return_cache``),
        intermediates with the cache (``return_intermediates``). ``seq_start_pos`` (b,) marks
        the left padding of each row (masked; padding takes no position); other keywords
        (context, context_mask, attn_mask) go to the stack.

        ``prepend_embeds`` (b, p, e) / ``prepend_mask`` (b, p) open the sequence (outputs kept
        unless ``excise_prepend_embeds``); ``embed_ids`` feed the ``embed_num_tokens`` tables;
        ``sum_embeds`` (b, n, e) is added to the embeddings. Pooling gives one vector (or k
        tokens) per row. The ``looped_*`` keywords drive a ``looped`` model
        (:mod:`x_attn.wrappers.looped`).
        """
        if kwargs:  # the signature is read only when there is something to check
            drop_unsupported("TransformerWrapper", "forward", kwargs, self._stack_keywords())
        loop = loop_options(
            self.looped,
            self.train_max_looped_steps,
            self.training,
            dict(
                looped_steps=looped_steps,
                max_looped_steps=max_looped_steps,
                looped_pred_all_logits=looped_pred_all_logits,
                looped_inference=looped_inference,
                looped_exit_prob_threshold=looped_exit_prob_threshold,
            ),
        )
        if loop is not None:
            loop = loop.refusing(mems=mems, prepend_embeds=prepend_embeds)
        if self.recycled_proj is not None:
            check_single_run_inputs(
                "TransformerWrapper",
                cache=cache,
                mems=mems,
                return_cache=return_cache,
                return_mems=return_mems,
                prepend_embeds=prepend_embeds,
            )
            sum_embeds = self._recycled(
                x, mask, recycle_steps, sum_embeds, embed_ids, token_emb_kwargs, kwargs
            )
        elif recycle_steps is not None:
            raise ValueError("TransformerWrapper: recycle_steps= needs recycling=True")
        x = self._check_tokens(x, mask)
        self._check_whole_sequence(cache, mems, return_cache)
        self._check_next_embed(return_next_embed_pred)
        self._check_logits_to_keep(logits_to_keep)
        not_include = default(input_not_include_cache, self.input_not_include_cache)
        returns_cache, given = return_cache or return_intermediates, x.shape[1]
        cache, x, mask, per_token = self._new_inputs(
            x, mask, cache, not_include, returns_cache, (embed_ids, sum_embeds)
        )
        new_positions(type(self).__name__, kwargs, given, x.shape[1])
        if loop is not None:  # the tokens are the stream's last x.shape[1] positions
            kwargs["loop"] = replace(loop, tokens=x.shape[1])
        embed_ids, sum_embeds = per_token
        if self.ff_deep_embed is not None:
            kwargs["deep_embeds_and_ids"] = (self.ff_deep_embed, x)
        h = embed_tokens(self.token_emb, x, self.l2norm_embed, token_emb_kwargs)
        h = add_extra_embeds(h, self.embeds, embed_ids)
        keep_hiddens(kwargs, return_intermediates, return_mems, return_next_embed_pred)
        out, inter, seq_mask = self._run_stack(
            h,
            mask,
            mems,
            cache,
            return_attn,
            return_intermediates,
            return_cache=return_cache,
            tokens=x,
            sum_embeds=sum_embeds,
            prepend_embeds=prepend_embeds,
            prepend_mask=prepend_mask,
            **kwargs,
        )
        p = out.shape[1] - x.shape[1] - self.num_cls_tokens  # prepended positions in the output
        add_emb = return_next_embed_pred and not (return_embeddings or return_logits_and_embeddings)
        result = self._head(
            out,
            seq_mask,
            inter,
            p if excise_prepend_embeds else 0,
            return_embeddings,
            return_logits_and_embeddings or add_emb,
            return_intermediates,
            to_logits_kwargs,
            logits_to_keep,
        )
        if return_next_embed_pred:
            result = self._with_next_embed(result, inter, return_embeddings, add_emb)
        return self._package(
            result, inter, mems, return_mems, return_attn, return_intermediates, return_cache
        )

    def _attend(self, h: Tensor, loop: Any = None, **kwargs: Any):
        """The stack on ``h``; a looped model runs it ``loop.steps`` times (see looped.py)."""
        if loop is None:
            return self.attn_layers(h, **kwargs)
        return run_loops(self, h, kwargs.pop("cache"), loop, kwargs)

    def _stack_keywords(self) -> set[str]:
        """Keywords this forward hands to the stack (others may be x-transformers-only flags)."""
        return set(inspect.signature(self.attn_layers.forward).parameters) | {"seq_start_pos"}


def _mixture(on: bool, k: int, dim: int) -> MixtureOfSoftmax | None:
    """The Mixture of Softmaxes head of ``mixture_of_softmax`` (arXiv 1711.03953), or None."""
    if on:
        return MixtureOfSoftmax(dim, k)
    if k != 4:
        raise ValueError(
            "TransformerWrapper: mixture_of_softmax_k configures mixture_of_softmax; set "
            "mixture_of_softmax=True or drop it"
        )
    return None


def _attention_pool(
    attn_layers: AttentionLayers,
    attn_pool: bool,
    num_pooled_tokens: int,
    depth: int,
    dim_pooled_tokens: int | None,
) -> AttentionPool | None:
    """The attention pooler of ``attn_pool`` (heads and head size of the stack), or None."""
    if not attn_pool:
        if num_pooled_tokens != 1 or depth != 1 or dim_pooled_tokens is not None:
            raise ValueError(
                "TransformerWrapper: num_pooled_tokens / attn_pool_depth / dim_pooled_tokens "
                "configure attn_pool; set attn_pool=True or drop them"
            )
        return None
    dim, cfg = attn_layers.dim, attn_layers.config
    return AttentionPool(
        dim_pooled_tokens or dim, dim, num_pooled_tokens, depth, cfg.heads, cfg.attn.dim_head
    )
