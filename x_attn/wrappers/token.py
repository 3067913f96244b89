"""TransformerWrapper: token embedding + positions + an attention stack + logits.

The shared core (positions, memory tokens, Transformer-XL mems, KV cache, pooling, packaging of
the extra returns) is :class:`x_attn.wrappers.sequence.SequenceWrapper`; this module adds the
token embedding and the logits head (:mod:`x_attn.wrappers.token_io`). The construction steps
(embeddings, heads, pooling, recycling / looping) are :mod:`x_attn.wrappers.token_build`; the
forward's input steps (token checks, the cache's new tokens, looping, recycling, the
embeddings) are :mod:`x_attn.wrappers.token_inputs`; its output assembly (pooling, embeddings /
logits, the next-embedding head) is :mod:`x_attn.wrappers.token_head`.

Shape legend: b batch, n sequence, d model dim, e embedding dim, v vocabulary, p prepended
positions.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any

from torch import Tensor, nn

from x_attn.cache import KVCache
from x_attn.compat import drop_unsupported
from x_attn.layers.deep_embed import deep_embed_table
from x_attn.layers.intermediates import keep_hiddens
from x_attn.layers.stack import AttentionLayers, LayerIntermediates
from x_attn.routing import checked_keywords
from x_attn.serialization import records_config
from x_attn.utils import check_positive_int, default
from x_attn.wrappers.looped import run_loops
from x_attn.wrappers.pooling import check_pooling
from x_attn.wrappers.sequence import SequenceWrapper
from x_attn.wrappers.token_build import OWNER, TokenBuild, attention_pool
from x_attn.wrappers.token_head import TokenHead
from x_attn.wrappers.token_inputs import TokenInputs

__all__ = ["SequenceWrapper", "TransformerWrapper"]


@records_config
class TransformerWrapper(TokenBuild, TokenInputs, TokenHead, SequenceWrapper):
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
        check_positive_int("num_tokens", num_tokens, OWNER)
        pools = (average_pool_embed, use_cls_token, num_cls_tokens, attn_pool)
        check_pooling(OWNER, attn_layers, *pools)
        self.num_tokens, self.emb_dim = num_tokens, emb_dim or attn_layers.dim
        self._init_embeddings(token_emb, l2norm_embed, embed_num_tokens)
        self._init_logits(tie_embedding, tie_embedding_scale, logits_dim, to_logits, logits_bias)
        self.squeeze_out_last_dim = squeeze_out_last_dim
        self._init_output_heads(
            mixture_of_softmax, mixture_of_softmax_k, logits_dim, add_continuous_pred_head
        )
        self.input_not_include_cache = input_not_include_cache
        self._init_pooling(use_cls_token, num_cls_tokens)
        self.attn_pool = attention_pool(
            attn_layers, attn_pool, num_pooled_tokens, attn_pool_depth, dim_pooled_tokens
        )
        self.ff_deep_embed = deep_embed_table(ff_deep_embed, num_tokens, attn_layers, OWNER)
        self._init_reruns(recycling, train_max_recycle_steps, looped, max_looped_steps, max_mem_len)

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
        looping = dict(
            looped_steps=looped_steps,
            max_looped_steps=max_looped_steps,
            looped_pred_all_logits=looped_pred_all_logits,
            looped_inference=looped_inference,
            looped_exit_prob_threshold=looped_exit_prob_threshold,
        )
        loop = self._loop(looping, mems, prepend_embeds)
        single_run = (cache, mems, return_cache, return_mems, prepend_embeds)
        per_token = (sum_embeds, embed_ids, token_emb_kwargs)
        sum_embeds = self._recycled_sum(x, mask, recycle_steps, per_token, single_run, kwargs)
        x = self._check_tokens(x, mask)
        self._check_whole_sequence(cache, mems, return_cache)
        self._check_next_embed(return_next_embed_pred)
        self._check_logits_to_keep(logits_to_keep)
        not_include = default(input_not_include_cache, self.input_not_include_cache)
        returns_cache = return_cache or return_intermediates
        cache, x, mask, (embed_ids, sum_embeds) = self._new_inputs(
            x, mask, cache, not_include, returns_cache, (embed_ids, sum_embeds), kwargs
        )
        if loop is not None:  # the tokens are the stream's last x.shape[1] positions
            kwargs["loop"] = replace(loop, tokens=x.shape[1])
        h = self._embed_tokens(x, embed_ids, token_emb_kwargs, kwargs)
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
        asked = (
            excise_prepend_embeds,
            return_embeddings,
            return_logits_and_embeddings,
            return_intermediates,
            return_next_embed_pred,
        )
        result = self._assemble(
            out, seq_mask, inter, x.shape[1], asked, to_logits_kwargs, logits_to_keep
        )
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
