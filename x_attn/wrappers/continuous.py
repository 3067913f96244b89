"""ContinuousTransformerWrapper: real-valued vectors in, real-valued vectors out.

The same positions, memory tokens, Transformer-XL mems, masks, attention maps and KV cache as
:class:`x_attn.wrappers.token.TransformerWrapper` (both are a
:class:`x_attn.wrappers.token.SequenceWrapper`); only the input embedding (a linear map from
``dim_in``) and the output projection (a linear map to ``dim_out``) differ.

Shape legend: b batch, n sequence, d model dim, di input dim, do output dim.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from x_attn.cache import KVCache
from x_attn.layers.stack import AttentionLayers, LayerIntermediates
from x_attn.routing import checked_keywords
from x_attn.serialization import records_config
from x_attn.utils import check_positive_int, default
from x_attn.validation import check_bool_mask, check_float_input
from x_attn.wrappers.cache_input import new_inputs, new_positions
from x_attn.wrappers.token import SequenceWrapper


@records_config
class ContinuousTransformerWrapper(SequenceWrapper):
    """Sequence model on continuous inputs (b, n, di) around an :class:`AttentionLayers` stack.

    Args:
        max_seq_len: longest sequence absolute positions cover.
        attn_layers: the stack (Encoder / Decoder / AttentionLayers).
        dim_in: input feature size; None feeds (b, n, d) straight into the stack.
        dim_out: output feature size; None returns the stack's (b, n, d).
        emb_dropout: dropout after the input projection and positions.
        use_abs_pos_emb: absolute positions; turned off automatically when the stack has
            relative positions (rotary, T5, ALiBi, position-infused).
        scaled_sinu_pos_emb: fixed sinusoids with a learned scale instead of a learned table.
        sinusoidal_pos_emb: the paper's fixed sinusoids (arXiv 1706.03762) instead of a table.
        num_memory_tokens: learned tokens prepended to every sequence (Memory Transformer,
            arXiv 2006.11527); stripped from the output.
        max_mem_len: Transformer-XL memory length kept by ``return_mems``.
    """

    @checked_keywords
    def __init__(
        self,
        *,
        max_seq_len: int,
        attn_layers: AttentionLayers,
        dim_in: int | None = None,
        dim_out: int | None = None,
        emb_dropout: float = 0.0,
        use_abs_pos_emb: bool = True,
        scaled_sinu_pos_emb: bool = False,
        num_memory_tokens: int | None = None,
        max_mem_len: int = 0,
        sinusoidal_pos_emb: bool = False,
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
        owner = "ContinuousTransformerWrapper"
        for name, value in (("dim_in", dim_in), ("dim_out", dim_out)):
            if value is not None:
                check_positive_int(name, value, owner)
        dim = attn_layers.dim
        self.dim_in, self.dim_out = default(dim_in, dim), default(dim_out, dim)
        self.project_in = nn.Linear(dim_in, dim) if dim_in is not None else nn.Identity()
        self.project_out = nn.Linear(dim, dim_out) if dim_out is not None else nn.Identity()

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
        """Outputs (b, n, dim_out), or the stack's (b, n, d) with ``return_embeddings``.

        Args:
            x: (b, n, dim_in) float inputs.
            mask: (b, n) bool padding mask, True = real position; masked inputs have no
                effect at all (whatever they hold, NaN included).
            mems: Transformer-XL memories returned by a previous call with ``return_mems``.
            cache: a :class:`KVCache` (``x`` = the new inputs) or the intermediates of an
                earlier call (``x`` = the whole sequence so far, as in x-transformers); only
                the inputs the cache has not seen run. The cache passed is left as it was.
            input_not_include_cache: with a cache, whether ``x`` holds only new inputs.
            **kwargs: context, context_mask, attn_mask, passed to the stack.

        Returns:
            The output, followed when asked, in this order, by mems (``return_mems``),
            attention maps (``return_attn``), the KV cache (``return_cache``) and
            intermediates (``return_intermediates``).
        """
        check_float_input("x", x, self.dim_in, "ContinuousTransformerWrapper")
        check_bool_mask("mask", mask, tuple(x.shape[:2]), "batch x sequence, True = real position")
        layers = self.attn_layers.num_attention_layers
        owner = type(self).__name__
        given = x.shape[1]
        cache, x, mask = new_inputs(
            owner,
            cache,
            x,
            mask,
            input_not_include_cache,
            layers,
            return_cache or return_intermediates,
        )
        new_positions(owner, kwargs, given, x.shape[1])
        if mask is not None:  # before project_in: a NaN there would reach its weight gradient
            x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
        out, inter = self._run_stack(
            self.project_in(x),
            mask,
            mems,
            cache,
            return_attn,
            return_intermediates,
            return_cache=return_cache,
            **kwargs,
        )
        result = out if return_embeddings else self.project_out(out)
        return self._package(
            result, inter, mems, return_mems, return_attn, return_intermediates, return_cache
        )
