"""TransformerWrapper's construction steps: embeddings, logits head, output options, pooling,
recycling and looping.

A mixin of :class:`x_attn.wrappers.token.TransformerWrapper`; each step checks its own flags and
builds its modules, in the order ``__init__`` calls them (which fixes the order of the checks
and of the modules' initialisation). The builders are :mod:`x_attn.wrappers.token_io`,
:mod:`x_attn.wrappers.pooling`, :mod:`x_attn.wrappers.recycling` and
:mod:`x_attn.wrappers.looped`.
"""

from __future__ import annotations

import torch
from torch import nn

from x_attn.layers.stack import AttentionLayers
from x_attn.wrappers.looped import check_looped
from x_attn.wrappers.mixture_of_softmax import MixtureOfSoftmax
from x_attn.wrappers.next_embed import build_next_embed_head
from x_attn.wrappers.pooling import AttentionPool
from x_attn.wrappers.recycling import RecycledProjection, check_recycling
from x_attn.wrappers.token_io import (
    build_extra_embeds,
    build_logits_head,
    build_token_embedding,
    check_tie,
)

OWNER = "TransformerWrapper"


class TokenBuild:
    """Construction steps of ``TransformerWrapper.__init__`` (after the shared core's)."""

    def _init_embeddings(
        self, token_emb: nn.Module | None, l2norm_embed: bool, embed_num_tokens: dict | None
    ) -> None:
        """The token embedding and the ``embed_num_tokens`` tables."""
        self.token_emb = build_token_embedding(
            self.num_tokens, self.emb_dim, token_emb, l2norm_embed, OWNER
        )
        self.embeds = build_extra_embeds(embed_num_tokens, self.emb_dim, OWNER)

    def _init_logits(
        self,
        tie_embedding: bool,
        tie_embedding_scale: float | None,
        logits_dim: int | None,
        to_logits: nn.Module | None,
        logits_bias: bool | None,
    ) -> None:
        """The logits head: tied to the token embedding, linear or a custom module."""
        dim = self.attn_layers.dim
        check_tie(self.token_emb, dim, tie_embedding, OWNER)
        self.tie_embedding_scale = dim**-0.5 if tie_embedding_scale is None else tie_embedding_scale
        self.to_logits = build_logits_head(
            dim, self.num_tokens, logits_dim, tie_embedding, to_logits, OWNER, logits_bias
        )

    def _init_output_heads(
        self, mixture_of_softmax: bool, k: int, logits_dim: int | None, next_embed: bool
    ) -> None:
        """The Mixture of Softmaxes head and the next-embedding head, when asked."""
        dim = self.attn_layers.dim
        if mixture_of_softmax and logits_dim == 1:
            raise ValueError(
                f"{OWNER}: mixture_of_softmax normalises over the logits, but logits_dim=1 has "
                "one (log P would always be 0); drop one of the two"
            )
        self.mixture = _mixture(mixture_of_softmax, k, dim)
        self.to_next_embed_pred = build_next_embed_head(dim) if next_embed else None

    def _init_pooling(self, use_cls_token: bool, num_cls_tokens: int) -> None:
        if use_cls_token:
            self.cls_token = nn.Parameter(torch.randn(num_cls_tokens, self.attn_layers.dim) * 0.02)
        elif num_cls_tokens != 1:
            raise ValueError("TransformerWrapper: num_cls_tokens needs use_cls_token=True")

    def _init_reruns(
        self,
        recycling: bool,
        train_max_recycle_steps: int,
        looped: bool,
        max_looped_steps: int,
        max_mem_len: int,
    ) -> None:
        """Recycling (its projection) or looping (its exit gate): both rerun the stack."""
        dim = self.attn_layers.dim
        check_recycling(recycling, train_max_recycle_steps, OWNER)
        self.train_max_recycle_steps = train_max_recycle_steps
        self.recycled_proj = RecycledProjection(dim, self.emb_dim) if recycling else None
        if recycling and max_mem_len:
            raise ValueError(f"{OWNER}: max_mem_len (memories of one run) with recycling")
        if recycling and (self.pools or self.attn_pool is not None):
            raise ValueError(f"{OWNER}: recycling feeds back one output per token; drop pooling")
        check_looped(self, looped, max_looped_steps, OWNER)
        if looped and recycling:
            raise ValueError(f"{OWNER}: looped and recycling both rerun the stack; choose one")
        self.looped, self.train_max_looped_steps = looped, max_looped_steps
        self.exit_gate = nn.Linear(dim, 1, bias=False) if looped else None


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


def attention_pool(
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
