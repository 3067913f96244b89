"""TransformerWrapper: token embedding + positions + an attention stack + logits.

:class:`SequenceWrapper` holds what every sequence wrapper shares (absolute positions, memory
tokens, Transformer-XL mems, KV cache, packaging of the extra returns); TransformerWrapper and
ContinuousTransformerWrapper only add their input embedding and output projection.

Shape legend: b batch, n sequence, d model dim, v vocabulary, m memory tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import repeat
from torch import Tensor, nn

from x_attn.cache import KVCache, Mems
from x_attn.cache.inputs import SeenInputs
from x_attn.cache.mems import next_mems
from x_attn.layers.stack import AttentionLayers, LayerIntermediates
from x_attn.positional.absolute import (
    AbsolutePositionalEmbedding,
    ScaledSinusoidalEmbedding,
    SinusoidalEmbedding,
)
from x_attn.positional.custom import route_pos
from x_attn.positional.row_positions import counted_positions, left_padding
from x_attn.routing import checked_keywords
from x_attn.serialization import records_config
from x_attn.utils import check_positive_int, check_probability, default
from x_attn.validation import check_bool_mask, check_seq_start_pos, token_ids
from x_attn.wrappers.cache_input import new_inputs, new_positions


def relative_positions_in_self_attention(attn_layers: AttentionLayers) -> bool:
    """True when a relative scheme (rotary, T5, ALiBi, infused) reaches a self-attention layer.

    Only then do the absolute positions of a wrapper become redundant; cross-attention never
    sees the stack's relative positions.
    """
    return attn_layers.positions.is_relative and "a" in attn_layers.types


def _check_memory_args(
    owner: str, attn_layers: AttentionLayers, max_mem_len: Any, num_memory_tokens: Any
) -> None:
    """Transformer-XL memory length and memory-token count: ints >= 0 the stack can use."""
    if isinstance(max_mem_len, bool) or not isinstance(max_mem_len, int) or max_mem_len < 0:
        raise ValueError(f"{owner}: 'max_mem_len' must be an int >= 0, got {max_mem_len!r}")
    if max_mem_len and attn_layers.reversible is not None:
        raise ValueError(
            f"{owner}: max_mem_len (Transformer-XL memories) needs per-layer hidden states, "
            "which a reversible=True stack does not keep; drop one of the two"
        )
    if max_mem_len and attn_layers.config.attn.mta:
        raise ValueError(
            f"{owner}: max_mem_len (Transformer-XL memories) gives keys without their query "
            "rows, which the query convolution of attn_mta reads; drop one of the two"
        )
    if max_mem_len and attn_layers.num_self_attention_layers == 0:
        raise ValueError(
            f"{owner}: max_mem_len (Transformer-XL memories) needs self-attention layers to "
            f"carry them, but the layers {attn_layers.types} have none; drop max_mem_len"
        )
    if num_memory_tokens is None:
        return
    if isinstance(num_memory_tokens, bool) or not isinstance(num_memory_tokens, int):
        raise TypeError(
            f"{owner}: 'num_memory_tokens' must be an int, got "
            f"{type(num_memory_tokens).__name__} {num_memory_tokens!r}"
        )
    if num_memory_tokens < 0:
        raise ValueError(
            f"{owner}: 'num_memory_tokens' must be >= 0 (0 or None: no memory tokens), got "
            f"{num_memory_tokens}"
        )


def _check_abs_kind(owner: str, dim: int, use: bool, scaled: bool, sinusoidal: bool) -> None:
    """One kind of absolute embedding, and only when absolute embeddings are on."""
    if not isinstance(sinusoidal, bool):
        raise TypeError(f"{owner}: 'sinusoidal_pos_emb' must be a bool, got {sinusoidal!r}")
    if sinusoidal and scaled:
        raise ValueError(
            f"{owner}: sinusoidal_pos_emb and scaled_sinu_pos_emb are two absolute embeddings; "
            "choose one"
        )
    if sinusoidal and not use:
        raise ValueError(
            f"{owner}: sinusoidal_pos_emb=True chooses the absolute embedding, but "
            "use_abs_pos_emb=False turns absolute embeddings off; drop one"
        )
    if sinusoidal and dim % 2:
        raise ValueError(f"{owner}: sinusoidal_pos_emb needs an even dim, got dim={dim}")


class SequenceWrapper(nn.Module):
    """Shared core of the sequence wrappers: (b, n, d) embeddings in, stack output out.

    Args:
        max_seq_len: longest sequence absolute positions cover.
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
    """

    def __init__(
        self,
        *,
        max_seq_len: int,
        attn_layers: AttentionLayers,
        emb_dropout: float = 0.0,
        use_abs_pos_emb: bool = True,
        scaled_sinu_pos_emb: bool = False,
        num_memory_tokens: int | None = None,
        max_mem_len: int = 0,
        sinusoidal_pos_emb: bool = False,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if not isinstance(attn_layers, AttentionLayers):
            raise TypeError(
                f"{owner}: 'attn_layers' must be an Encoder, Decoder or "
                f"AttentionLayers, got {type(attn_layers).__name__}"
            )
        check_positive_int("max_seq_len", max_seq_len, owner)
        check_probability("emb_dropout", emb_dropout, owner)
        _check_memory_args(owner, attn_layers, max_mem_len, num_memory_tokens)
        dim = attn_layers.dim
        self.max_seq_len, self.max_mem_len = max_seq_len, max_mem_len
        self.attn_layers = attn_layers
        self.pos_emb: nn.Module | None = None
        _check_abs_kind(owner, dim, use_abs_pos_emb, scaled_sinu_pos_emb, sinusoidal_pos_emb)
        if use_abs_pos_emb and not relative_positions_in_self_attention(attn_layers):
            self.pos_emb = (
                ScaledSinusoidalEmbedding(dim)
                if scaled_sinu_pos_emb
                else SinusoidalEmbedding(dim)
                if sinusoidal_pos_emb
                else AbsolutePositionalEmbedding(dim, max_seq_len)
            )
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.memory_tokens = None
        if num_memory_tokens:
            self.memory_tokens = nn.Parameter(torch.randn(num_memory_tokens, dim) * 0.02)

    @property
    def num_memory_tokens(self) -> int:
        return 0 if self.memory_tokens is None else self.memory_tokens.shape[0]

    @property
    def has_abs_positions(self) -> bool:
        return isinstance(self.pos_emb, AbsolutePositionalEmbedding)

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
        **kwargs: Any,
    ) -> tuple[Tensor, LayerIntermediates]:
        """Positions, dropout, memory tokens, then the stack on embeddings ``h`` (b, n, d).

        ``h`` holds only inputs the cache has not seen (see :mod:`x_attn.wrappers.cache_input`);
        ``tokens`` are their ids, kept in the cache. ``seq_start_pos`` (b,): index of each
        row's first real input in the whole sequence; the positions before it are padding,
        masked as in x-transformers. Padding takes no position: absolute positions count each
        row's real inputs. Memory tokens open the stream: they are prepended when neither a
        cache nor mems hold them yet. Masked positions enter as zeros, so what they hold (a NaN
        in a padded continuous input) has no effect at all. Returns the stack output (b, n, d)
        with memory tokens stripped, and its intermediates.
        """
        b, n = h.shape[:2]
        owner = type(self).__name__
        pos = self._route_pos(kwargs, b, n)
        seen = cache.inputs if cache is not None else SeenInputs()
        streaming = cache is not None or return_intermediates or return_cache
        check_seq_start_pos(seq_start_pos, b, None if streaming else seen.count + n, owner)
        mask = left_padding(mask, seq_start_pos, seen.count, n)
        if mask is not None:  # else 0 * NaN in the attention weights reaches every output
            h = h.masked_fill(~mask.unsqueeze(-1), 0.0)
        if self.pos_emb is not None:
            h = h + self._positions(seen.real_before(), n, mask, h.device, pos).to(h.dtype)
        h = self.emb_dropout(h)
        first = cache is None or cache.length == 0
        prepend = self.memory_tokens is not None and first and mems is None
        inputs_mask = mask
        if prepend:
            h, mask = self._prepend_memory(h, mask)
        cache = self._new_cache(cache, return_intermediates, return_cache)
        out, inter = self.attn_layers(
            h,
            mask=mask,
            mems=mems,
            cache=cache,
            return_hiddens=True,
            return_attn=return_attn,
            **kwargs,
        )
        if inter.cache is not None:
            inter.cache.record_inputs(seen.extend(tokens, inputs_mask, n))
        if prepend:
            out = out[:, self.num_memory_tokens :]
        return out, inter

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

    def explain(self) -> list[str]:
        """Which kernel each attention layer uses by default, and why."""
        return self.attn_layers.explain()

    def _route_pos(self, kwargs: dict[str, Any], b: int, n: int) -> Tensor | None:
        """x-transformers' ``pos`` (see :func:`x_attn.positional.custom.route_pos`)."""
        uses = (self.attn_layers.positions.is_relative, self.memory_tokens is not None)
        return route_pos(type(self).__name__, kwargs, (b, n), uses, self.pos_emb is not None)

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
        if mask is not None and not bool(mask[:, 0].all()):
            self._refuse_gap()
        mem = repeat(self.memory_tokens, "m d -> b m d", b=h.shape[0]).to(h.dtype)
        if mask is not None:
            ones = torch.ones(h.shape[0], mem.shape[1], dtype=torch.bool, device=h.device)
            mask = torch.cat((ones, mask), dim=1)
        return torch.cat((mem, h), dim=1), mask

    def _refuse_gap(self) -> None:
        """Memory tokens in front of left padding leave a gap that convolutions would read."""
        flags = {f for m in self.attn_layers.modules() for f in getattr(m, "neighbour_flags", ())}
        if flags:
            raise ValueError(
                f"{type(self).__name__}: num_memory_tokens with a left-padded mask puts padding "
                f"between the memory tokens and the row, and {sorted(flags)} mix neighbouring "
                "positions, so a padded row would not compute what it computes alone; pad on "
                "the right, or drop num_memory_tokens"
            )

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
            raise ValueError(
                "return_mems=True: this stack keeps no per-layer hidden states "
                f"({self.attn_layers.uncacheable_reason or 'no self-attention layers'})"
            )
        return next_mems(hiddens, mems, mask, self.max_mem_len)


@records_config
class TransformerWrapper(SequenceWrapper):
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
        tie_embedding: logits use the token embedding matrix.
        logits_dim: output size (default num_tokens).
        num_memory_tokens: learned tokens prepended to every sequence (Memory Transformer,
            arXiv 2006.11527); stripped from the output.
        max_mem_len: Transformer-XL memory length kept by ``return_mems``.
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
        logits_dim: int | None = None,
        num_memory_tokens: int | None = None,
        max_mem_len: int = 0,
        sinusoidal_pos_emb: bool = False,
        input_not_include_cache: bool | None = None,
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
        )
        check_positive_int("num_tokens", num_tokens, "TransformerWrapper")
        if logits_dim is not None:
            check_positive_int("logits_dim", logits_dim, "TransformerWrapper")
        if tie_embedding and logits_dim is not None and logits_dim != num_tokens:
            raise ValueError(
                "TransformerWrapper: tie_embedding=True needs logits_dim == num_tokens"
            )
        if input_not_include_cache is not None and not isinstance(input_not_include_cache, bool):
            raise TypeError(
                "TransformerWrapper: 'input_not_include_cache' must be a bool or None, got "
                f"{input_not_include_cache!r}"
            )
        self.input_not_include_cache = input_not_include_cache
        dim = attn_layers.dim
        self.num_tokens = num_tokens
        self.token_emb = nn.Embedding(num_tokens, dim)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        self.to_logits = None if tie_embedding else nn.Linear(dim, logits_dim or num_tokens)

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
        **kwargs: Any,
    ):
        """Logits (b, n, logits_dim), or embeddings (b, n, d) with ``return_embeddings``.

        With a cache (a :class:`KVCache`, or the intermediates of an earlier call as in
        x-transformers), only the tokens the cache has not seen run, and only their logits
        are returned; ``input_not_include_cache`` says whether ``x`` holds only those (see
        :mod:`x_attn.wrappers.cache_input`). The cache passed is left as it was.

        Extra returns, in this order when asked: mems (``return_mems``, a :class:`Mems` with
        their padding), attention maps (``return_attn``), the KV cache (``return_cache``),
        intermediates with the cache (``return_intermediates``). ``seq_start_pos`` (b,) marks
        the left padding of each row (masked; padding takes no position); other keywords
        (context, context_mask, attn_mask) go to the stack.
        """
        x = self._check_tokens(x, mask)
        not_include = default(input_not_include_cache, self.input_not_include_cache)
        layers = self.attn_layers.num_attention_layers
        given = x.shape[1]
        cache, x, mask = new_inputs(
            type(self).__name__,
            cache,
            x,
            mask,
            not_include,
            layers,
            return_cache or return_intermediates,
        )
        new_positions(type(self).__name__, kwargs, given, x.shape[1])
        out, inter = self._run_stack(
            self.token_emb(x),
            mask,
            mems,
            cache,
            return_attn,
            return_intermediates,
            return_cache=return_cache,
            tokens=x,
            **kwargs,
        )
        result = out if return_embeddings else self._logits(out)
        return self._package(
            result, inter, mems, return_mems, return_attn, return_intermediates, return_cache
        )

    def _logits(self, h: Tensor) -> Tensor:
        if self.to_logits is None:
            return h @ self.token_emb.weight.t()
        return self.to_logits(h)

    def _check_tokens(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """Token ids (b, n) in range, as an integer tensor; float ids of integral values cast."""
        x = token_ids(
            "x", x, type(self).__name__, "; for continuous inputs use ContinuousTransformerWrapper"
        )
        if x.ndim != 2:
            raise ValueError(f"'x' must have shape (batch, seq), got {tuple(x.shape)}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.num_tokens):
            raise ValueError(
                f"'x' holds token ids outside [0, num_tokens={self.num_tokens}): "
                f"min {int(x.min())}, max {int(x.max())}"
            )
        check_bool_mask("mask", mask, tuple(x.shape), "batch x sequence, True = real token")
        return x
