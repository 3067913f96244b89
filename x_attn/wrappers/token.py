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

from x_attn.cache import KVCache
from x_attn.layers.stack import AttentionLayers, LayerIntermediates
from x_attn.positional.absolute import AbsolutePositionalEmbedding, ScaledSinusoidalEmbedding
from x_attn.routing import checked_keywords
from x_attn.serialization import records_config
from x_attn.utils import check_positive_int, check_probability
from x_attn.validation import check_bool_mask, check_cache, check_seq_start_pos, token_ids


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


class SequenceWrapper(nn.Module):
    """Shared core of the sequence wrappers: (b, n, d) embeddings in, stack output out.

    Args:
        max_seq_len: longest sequence absolute positions cover.
        attn_layers: the stack (Encoder / Decoder / AttentionLayers).
        emb_dropout: dropout after the embeddings.
        use_abs_pos_emb: absolute positions; turned off automatically when the stack
            has relative positions (rotary, T5, ALiBi, position-infused), as in x-transformers.
        scaled_sinu_pos_emb: fixed sinusoids with a learned scale instead of a learned table.
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
        if use_abs_pos_emb and not relative_positions_in_self_attention(attn_layers):
            self.pos_emb = (
                ScaledSinusoidalEmbedding(dim)
                if scaled_sinu_pos_emb
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
        **kwargs: Any,
    ) -> tuple[Tensor, LayerIntermediates]:
        """Positions, dropout, memory tokens, then the stack on embeddings ``h`` (b, n, d).

        ``seq_start_pos`` (b,): per-sample index of the first real token of left-padded rows;
        absolute positions count from there (relative schemes are shift-invariant already).
        Memory tokens open the stream: they are prepended when neither a cache nor mems hold
        them yet. Masked positions enter as zeros, so what they hold (a NaN in a padded
        continuous input) has no effect at all. Returns the stack output (b, n, d) with memory
        tokens stripped, and its intermediates.
        """
        n = h.shape[1]
        if mask is not None:  # else 0 * NaN in the attention weights reaches every output
            h = h.masked_fill(~mask.unsqueeze(-1), 0.0)
        owner = type(self).__name__
        check_cache(cache, self.attn_layers.num_attention_layers, h.shape[0], owner)
        # a cache holds the memory tokens after its first call; an empty one holds nothing
        past = max(cache.length - self.num_memory_tokens, 0) if cache is not None else 0
        check_seq_start_pos(seq_start_pos, h.shape[0], past + n, owner)
        if self.pos_emb is not None:
            h = h + self._positions(past, n, h.device, seq_start_pos).to(h.dtype)
        h = self.emb_dropout(h)
        prepend = self.memory_tokens is not None and past <= 0 and mems is None
        if prepend:
            h, mask = self._prepend_memory(h, mask)
            if kwargs.get("global_mask") is not None:  # memory tokens are not global tokens
                marked = kwargs["global_mask"]
                front = marked.new_zeros(marked.shape[0], self.num_memory_tokens)
                kwargs["global_mask"] = torch.cat((front, marked), dim=1)
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

    def _positions(
        self, past: int, n: int, device: torch.device, seq_start_pos: Tensor | None = None
    ) -> Tensor:
        if self.has_abs_positions and past + n > self.max_seq_len:
            raise ValueError(
                f"sequence of {past + n} positions exceeds max_seq_len={self.max_seq_len} while "
                "learned absolute positions are in use; raise max_seq_len, or go longer with a "
                "relative scheme (rotary_pos_emb=True, rel_pos_bias=True or alibi_pos_bias=True "
                "on the layers, which turns absolute positions off) or use_abs_pos_emb=False"
            )
        positions = torch.arange(past, past + n, device=device)
        if seq_start_pos is None:
            return self.pos_emb(positions)
        positions = (positions - seq_start_pos.to(device).unsqueeze(-1)).clamp(min=0)  # (b, n)
        return self.pos_emb(positions.flatten()).unflatten(0, positions.shape)

    def _prepend_memory(self, h: Tensor, mask: Tensor | None):
        mem = repeat(self.memory_tokens, "m d -> b m d", b=h.shape[0]).to(h.dtype)
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
            extras.append(self.next_mems(inter.hiddens, mems))
        if return_attn:
            extras.append(inter.attn_maps)
        if return_cache:
            extras.append(inter.cache)
        if return_intermediates:
            extras.append(inter)
        return (result, *extras) if extras else result

    def next_mems(self, hiddens: list[Tensor], mems: list[Tensor] | None) -> list[Tensor]:
        """Transformer-XL: old mems + this segment's layer inputs, detached, last max_mem_len."""
        if not hiddens:
            raise ValueError(
                "return_mems=True: this stack keeps no per-layer hidden states "
                f"({self.attn_layers.uncacheable_reason or 'no self-attention layers'})"
            )
        if mems is not None:
            hiddens = [torch.cat((m, h), dim=1) for m, h in zip(mems, hiddens)]
        keep = self.max_mem_len if self.max_mem_len > 0 else hiddens[0].shape[1]
        return [h[:, -keep:].detach() for h in hiddens]


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
        tie_embedding: logits use the token embedding matrix.
        logits_dim: output size (default num_tokens).
        num_memory_tokens: learned tokens prepended to every sequence (Memory Transformer,
            arXiv 2006.11527); stripped from the output.
        max_mem_len: Transformer-XL memory length kept by ``return_mems``.
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
    ) -> None:
        super().__init__(
            max_seq_len=max_seq_len,
            attn_layers=attn_layers,
            emb_dropout=emb_dropout,
            use_abs_pos_emb=use_abs_pos_emb,
            scaled_sinu_pos_emb=scaled_sinu_pos_emb,
            num_memory_tokens=num_memory_tokens,
            max_mem_len=max_mem_len,
        )
        check_positive_int("num_tokens", num_tokens, "TransformerWrapper")
        if logits_dim is not None:
            check_positive_int("logits_dim", logits_dim, "TransformerWrapper")
        if tie_embedding and logits_dim is not None and logits_dim != num_tokens:
            raise ValueError(
                "TransformerWrapper: tie_embedding=True needs logits_dim == num_tokens"
            )
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
        cache: KVCache | None = None,
        return_intermediates: bool = False,
        return_cache: bool = False,
        **kwargs: Any,
    ):
        """Logits (b, n, logits_dim), or embeddings (b, n, d) with ``return_embeddings``.

        Extra returns, in this order when asked: mems (``return_mems``), attention maps
        (``return_attn``), the KV cache (``return_cache``; a new one when ``cache`` is None),
        intermediates with the cache (``return_intermediates``). ``seq_start_pos`` (b,) shifts
        absolute positions of left-padded rows; other keywords (context, context_mask,
        attn_mask) go to the stack.
        """
        x = self._check_tokens(x, mask)
        out, inter = self._run_stack(
            self.token_emb(x),
            mask,
            mems,
            cache,
            return_attn,
            return_intermediates,
            return_cache=return_cache,
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
