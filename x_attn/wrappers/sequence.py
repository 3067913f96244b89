"""SequenceWrapper: what the token and continuous wrappers share.

Absolute positions, input-embedding options, memory / class tokens, prepended embeddings,
Transformer-XL mems, the KV cache, pooling and packaging of the extra returns. The stream the
stack sees is ``[memory tokens, class tokens, prepended embeddings, sequence]``; input-embedding
options live in :mod:`x_attn.wrappers.embedding`, pooling in :mod:`x_attn.wrappers.pooling`,
the argument checks in :mod:`x_attn.wrappers.sequence_checks`.

Shape legend: b batch, n sequence, d model dim, e embedding dim, m memory tokens,
k class tokens, p prepended positions.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import repeat
from torch import Tensor, nn

from x_attn.cache import KVCache, Mems
from x_attn.cache.inputs import SeenInputs
from x_attn.cache.mems import next_mems
from x_attn.layers.norms import LayerNorm
from x_attn.layers.stack import AttentionLayers, LayerIntermediates
from x_attn.positional.absolute import (
    AbsolutePositionalEmbedding,
    ScaledSinusoidalEmbedding,
    SinusoidalEmbedding,
)
from x_attn.positional.custom import route_pos
from x_attn.positional.row_positions import counted_positions, left_padding
from x_attn.utils import check_positive_int, check_probability, dropout_if_active
from x_attn.validation_inputs import check_cache, check_seq_start_pos
from x_attn.wrappers.embedding import (
    check_frac,
    check_prepend,
    frac_gradient,
    l2norm,
    stream_mask,
    zero_masked,
)
from x_attn.wrappers.pooling import masked_mean
from x_attn.wrappers.sequence_checks import check_abs_kind, check_memory_args, refuse_lead_gap


def relative_positions_in_self_attention(attn_layers: AttentionLayers) -> bool:
    """True when a relative scheme (rotary, T5, ALiBi, infused) reaches a self-attention layer.

    Only then do the absolute positions of a wrapper become redundant; cross-attention never
    sees the stack's relative positions.
    """
    return attn_layers.positions.is_relative and "a" in attn_layers.types


class SequenceWrapper(nn.Module):
    """Shared core of the sequence wrappers: (b, n, d) embeddings in, stack output out.

    Args:
        max_seq_len: longest sequence absolute positions cover; None (continuous wrapper
            only) means no absolute positions.
        attn_layers: the stack (Encoder / Decoder / AttentionLayers).
        emb_dropout: dropout after the embeddings.
        use_abs_pos_emb: absolute positions; turned off automatically when the stack
            has relative positions (rotary, T5, ALiBi, position-infused), as in x-transformers.
        scaled_sinu_pos_emb: fixed sinusoids with a learned scale instead of a learned table.
        sinusoidal_pos_emb: the fixed sinusoids of Attention Is All You Need instead of a
            learned table (off, like every absolute embedding, with relative positions).
        num_memory_tokens: learned tokens prepended to every sequence (Memory Transformer,
            arXiv 2006.11527); stripped from the output.
        max_mem_len: Transformer-XL memory length kept by ``return_mems``.
        emb_dim: width e of the input embeddings and absolute positions (default: the stack's
            dim); a linear map (``project_emb``) takes them to the stack's width.
        post_emb_norm: LayerNorm (gain, no bias) after the summed input embeddings.
        l2norm_embed: learned absolute positions are L2-normalised (FixNorm).
        emb_frac_gradient: fraction of the gradient that reaches the input embeddings.
        average_pool_embed: masked mean over the positions instead of one output per position.
    """

    def __init__(
        self,
        *,
        max_seq_len: int | None,
        attn_layers: AttentionLayers,
        emb_dropout: float = 0.0,
        use_abs_pos_emb: bool = True,
        scaled_sinu_pos_emb: bool = False,
        num_memory_tokens: int | None = None,
        max_mem_len: int = 0,
        sinusoidal_pos_emb: bool = False,
        emb_dim: int | None = None,
        post_emb_norm: bool = False,
        l2norm_embed: bool = False,
        emb_frac_gradient: float = 1.0,
        average_pool_embed: bool = False,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if not isinstance(attn_layers, AttentionLayers):
            raise TypeError(
                f"{owner}: 'attn_layers' must be an Encoder, Decoder or "
                f"AttentionLayers, got {type(attn_layers).__name__}"
            )
        if max_seq_len is not None:
            check_positive_int("max_seq_len", max_seq_len, owner)
        check_probability("emb_dropout", emb_dropout, owner)
        check_memory_args(owner, attn_layers, max_mem_len, num_memory_tokens)
        dim = attn_layers.dim
        emb_dim = dim if emb_dim is None else emb_dim
        check_positive_int("emb_dim", emb_dim, owner)
        check_frac(emb_frac_gradient, owner)
        self.max_seq_len, self.max_mem_len = max_seq_len, max_mem_len
        self.attn_layers = attn_layers
        self.pos_emb: nn.Module | None = None
        relative = relative_positions_in_self_attention(attn_layers)
        kinds = (use_abs_pos_emb, scaled_sinu_pos_emb, sinusoidal_pos_emb, max_seq_len)
        check_abs_kind(owner, emb_dim, *kinds)
        if use_abs_pos_emb and max_seq_len is not None and not relative:
            self.pos_emb = (
                ScaledSinusoidalEmbedding(emb_dim)
                if scaled_sinu_pos_emb
                else SinusoidalEmbedding(emb_dim)
                if sinusoidal_pos_emb
                else AbsolutePositionalEmbedding(emb_dim, max_seq_len)
            )
            if l2norm_embed and self.has_abs_positions:  # small init under the L2 norm
                nn.init.normal_(self.pos_emb.emb.weight, std=1e-5)
        self.l2norm_embed, self.emb_frac_gradient = l2norm_embed, float(emb_frac_gradient)
        self.post_emb_norm = LayerNorm(emb_dim, bias=False) if post_emb_norm else None
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.project_emb = nn.Linear(emb_dim, dim) if emb_dim != dim else None
        self.memory_tokens = None
        if num_memory_tokens:
            self.memory_tokens = nn.Parameter(torch.randn(num_memory_tokens, dim) * 0.02)
        self.average_pool_embed = average_pool_embed
        self.cls_token: nn.Parameter | None = None  # set by TransformerWrapper(use_cls_token)

    @property
    def num_memory_tokens(self) -> int:
        return 0 if self.memory_tokens is None else self.memory_tokens.shape[0]

    @property
    def num_cls_tokens(self) -> int:
        return 0 if self.cls_token is None else self.cls_token.shape[0]

    @property
    def has_abs_positions(self) -> bool:
        return isinstance(self.pos_emb, AbsolutePositionalEmbedding)

    @property
    def pools(self) -> bool:
        """The output summarises the sequence (mean or class tokens), one vector per row."""
        return self.average_pool_embed or self.cls_token is not None

    def _run_stack(
        self,
        h: Tensor,
        mask: Tensor | None,
        mems: list[Tensor] | None,
        cache: KVCache | None,
        return_attn: bool,
        return_intermediates: bool,
        seq_start_pos: Tensor | None = None,
        return_cache: bool = False,
        tokens: Tensor | None = None,
        sum_embeds: Tensor | None = None,
        prepend_embeds: Tensor | None = None,
        prepend_mask: Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[Tensor, LayerIntermediates, Tensor | None]:
        """Positions, embedding options, lead tokens, then the stack on embeddings ``h`` (b, n, e).

        ``h`` holds only inputs the cache has not seen (see :mod:`x_attn.wrappers.cache_input`);
        ``tokens`` are their ids, kept in the cache. ``seq_start_pos`` (b,): index of each
        row's first real input in the whole sequence; the positions before it are padding,
        masked as in x-transformers. Padding takes no position: absolute positions count each
        row's real inputs. Memory tokens, class tokens and ``prepend_embeds`` (b, p, e) open the
        stream on the first call; a cache holds them afterwards (``prepend_embeds`` passed again
        with a non-empty cache, as a decoding loop repeating its inputs does, change nothing).
        Masked positions (``mask``, ``prepend_mask``) enter as zeros, so what they hold (a NaN
        in a padded continuous input) has no effect at all. Returns the stack output
        (b, k + p + n, d) with memory tokens stripped, its intermediates, and the padding of
        its last p + n positions (left padding of ``seq_start_pos`` included), or None.
        """
        owner = type(self).__name__
        (b, n), p = h.shape[:2], 0 if prepend_embeds is None else prepend_embeds.shape[1]
        check_prepend(prepend_embeds, prepend_mask, b, h.shape[-1], owner)
        check_cache(cache, self.attn_layers.num_cache_entries, b, owner)
        first = cache is None or cache.length == 0
        pos = self._route_pos(kwargs, b, n, prepend_embeds is not None and first)
        seen = cache.inputs if cache is not None else SeenInputs()
        streaming = cache is not None or return_intermediates or return_cache
        check_seq_start_pos(seq_start_pos, b, None if streaming else seen.count + n, owner)
        mask = left_padding(mask, seq_start_pos, seen.count, n)
        h = self._embed(zero_masked(h, mask), (seen.real_before(), mask, pos), sum_embeds)
        inputs_mask = mask
        if prepend_embeds is not None and first:
            prepend_embeds = zero_masked(prepend_embeds, prepend_mask)
            h = torch.cat((prepend_embeds.to(h.dtype), h), dim=1)
            mask = stream_mask(mask, n, prepend_mask, p, b, h.device)
        out_mask = mask
        h = dropout_if_active(self.emb_dropout, frac_gradient(h, self.emb_frac_gradient))
        if self.project_emb is not None:
            h = self.project_emb(h)
        prepend = (self.memory_tokens is not None or self.cls_token is not None) and first
        prepend = prepend and mems is None
        if prepend:
            h, mask = self._prepend_memory(h, mask)
            if kwargs.get("global_mask") is not None:  # memory tokens are not global tokens
                marked = kwargs["global_mask"]
                front = marked.new_zeros(marked.shape[0], self.num_memory_tokens)
                kwargs["global_mask"] = torch.cat((front, marked), dim=1)
        cache = self._new_cache(cache, return_intermediates, return_cache)
        out, inter = self._attend(
            h,
            mask=mask,
            mems=mems,
            cache=cache,
            return_hiddens=True,
            return_attn=return_attn,
            start_cache=False,  # _new_cache started one if this call returns it
            **kwargs,
        )
        if inter.cache is not None:
            inter.cache.record_inputs(seen.extend(tokens, inputs_mask, n))
        if prepend:
            out = out[:, self.num_memory_tokens :]
        return out, inter, out_mask

    def _attend(self, h: Tensor, **kwargs: Any) -> tuple[Tensor, LayerIntermediates]:
        """The stack on the stream ``h`` (a subclass may run it otherwise: looped models)."""
        return self.attn_layers(h, **kwargs)

    def _embed(self, h: Tensor, where: tuple, sum_embeds: Tensor | None) -> Tensor:
        """Absolute positions (L2-normalised with l2norm_embed), ``sum_embeds``, post_emb_norm.

        ``where``: (real inputs before these, their mask, the ``pos`` given or None).
        """
        if self.pos_emb is not None:
            real_before, mask, given = where
            pos = self._positions(real_before, h.shape[1], mask, h.device, given)
            h = h + (l2norm(pos) if self.l2norm_embed and self.has_abs_positions else pos).to(
                h.dtype
            )
        if sum_embeds is not None:
            if not isinstance(sum_embeds, Tensor) or sum_embeds.shape != h.shape:
                raise ValueError(
                    f"'sum_embeds' must be a tensor of the embeddings' shape {tuple(h.shape)}, "
                    f"got {getattr(sum_embeds, 'shape', type(sum_embeds).__name__)}"
                )
            h = h + sum_embeds.to(h.dtype)
        return h if self.post_emb_norm is None else self.post_emb_norm(h)

    def _check_whole_sequence(self, cache: Any, mems: Any, return_cache: bool) -> None:
        """Pooling summarises one whole sequence: no KV cache, no Transformer-XL mems."""
        if self.pools and (cache is not None or mems is not None or return_cache):
            raise ValueError(
                f"{type(self).__name__}: the output is pooled over the whole sequence "
                "(average_pool_embed / use_cls_token), so it cannot run with a KV cache or mems"
            )

    def _pool(self, out: Tensor, mask: Tensor | None) -> Tensor:
        """Class tokens -> (b, d) or (b, k, d); mean pooling -> (b, d); else unchanged."""
        if self.cls_token is not None:
            k = self.num_cls_tokens
            return out[:, 0] if k == 1 else out[:, :k]
        if self.average_pool_embed:
            return masked_mean(out, mask)
        return out

    def _new_cache(
        self, cache: KVCache | None, return_intermediates: bool, return_cache: bool
    ) -> KVCache | None:
        """A fresh cache when one is asked for (return_cache / return_intermediates)."""
        if cache is not None or not (return_intermediates or return_cache):
            return cache
        reason = self.attn_layers.uncacheable_reason
        if reason is None:
            return self.attn_layers.new_cache()
        if return_cache:
            raise ValueError(f"return_cache=True: this model cannot use a KV cache: {reason}")
        return None  # intermediates without a cache

    def attn_qk_clip_(self, intermediates: Any, tau: float = 100.0) -> None:
        """QK-clip (arXiv 2507.20534) the attention layers on the intermediates of a forward
        with ``return_intermediates=True``; see :meth:`AttentionLayers.attn_qk_clip_`."""
        self.attn_layers.attn_qk_clip_(intermediates, tau)

    def explain(self) -> list[str]:
        """Which kernel each attention layer uses by default, and why."""
        return self.attn_layers.explain()

    def _route_pos(self, kwargs: dict[str, Any], b: int, n: int, prepends: bool) -> Tensor | None:
        """x-transformers' ``pos`` (see :func:`x_attn.positional.custom.route_pos`).

        ``prepends``: ``prepend_embeds`` open the stream in this call.
        """
        owner, relative = type(self).__name__, self.attn_layers.positions.is_relative
        if relative and kwargs.get("pos") is not None and (prepends or self.cls_token is not None):
            raise ValueError(
                f"{owner}: 'pos' positions the tokens for the layers, but class tokens / "
                "prepend_embeds open the stream at positions it does not give; drop one"
            )
        uses = (relative, self.memory_tokens is not None)
        return route_pos(owner, kwargs, (b, n), uses, self.pos_emb is not None)

    def _positions(
        self,
        real_before: Tensor | int,
        n: int,
        mask: Tensor | None,
        device: torch.device,
        pos: Tensor | None = None,
    ) -> Tensor:
        """Absolute position embeddings of ``n`` new inputs: each row counts its real ones.

        ``pos`` (n,) or (b, n): the positions given in forward, taken as they are.
        """
        if pos is not None:
            positions = pos.to(device)
        elif mask is None:
            positions = torch.arange(n, device=device) + (
                real_before if isinstance(real_before, int) else real_before.unsqueeze(-1)
            )
        else:
            positions = counted_positions(mask, real_before)
        plain = pos is None and mask is None and isinstance(real_before, int)
        top = real_before + n if plain else int(positions.max()) + 1
        if self.has_abs_positions and top > self.max_seq_len:
            raise ValueError(
                f"sequence of {top} positions exceeds max_seq_len={self.max_seq_len} while "
                "learned absolute positions are in use; raise max_seq_len, or go longer with a "
                "relative scheme (rotary_pos_emb=True, rel_pos_bias=True or alibi_pos_bias=True "
                "on the layers, which turns absolute positions off) or use_abs_pos_emb=False"
            )
        if positions.ndim == 1:
            return self.pos_emb(positions)
        return self.pos_emb(positions.flatten()).unflatten(0, positions.shape)

    def _prepend_memory(self, h: Tensor, mask: Tensor | None):
        """[memory tokens, class tokens] before ``h`` (b, n, d); the mask grows with ones."""
        if mask is not None and not bool(mask[:, 0].all()):
            refuse_lead_gap(type(self).__name__, self.attn_layers)
        lead = [t for t in (self.memory_tokens, self.cls_token) if t is not None]
        mem = repeat(torch.cat(lead), "m d -> b m d", b=h.shape[0]).to(h.dtype)
        if mask is not None:
            ones = torch.ones(h.shape[0], mem.shape[1], dtype=torch.bool, device=h.device)
            mask = torch.cat((ones, mask), dim=1)
        return torch.cat((mem, h), dim=1), mask

    def _package(
        self,
        result,
        inter: LayerIntermediates,
        mems,
        return_mems,
        return_attn,
        return_intermediates,
        return_cache: bool = False,
    ):
        extras = []
        if return_mems:
            extras.append(self.next_mems(inter.hiddens, mems, inter.mask))
        if return_attn:
            extras.append(inter.attn_maps)
        if return_cache:
            extras.append(inter.cache)
        if return_intermediates:
            extras.append(inter)
        return (result, *extras) if extras else result

    def next_mems(
        self, hiddens: list[Tensor], mems: list[Tensor] | None, mask: Tensor | None = None
    ) -> Mems:
        """Transformer-XL: old mems + this segment's layer inputs (padding ``mask``), detached,
        the last max_mem_len (see :func:`x_attn.cache.mems.next_mems`)."""
        if not hiddens:
            why_no_hiddens = "no self-attention layers, or keep_hiddens=False"
            raise ValueError(
                "return_mems=True: this stack keeps no per-layer hidden states "
                f"({self.attn_layers.uncacheable_reason or why_no_hiddens})"
            )
        return next_mems(hiddens, mems, mask, self.max_mem_len)
