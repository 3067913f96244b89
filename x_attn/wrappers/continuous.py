"""ContinuousTransformerWrapper: real-valued vectors in, real-valued vectors out.

The same positions, memory tokens, Transformer-XL mems, masks, attention maps and KV cache as
:class:`x_attn.wrappers.token.TransformerWrapper` (both are a
:class:`x_attn.wrappers.sequence.SequenceWrapper`); only the input embedding (a linear map from
``dim_in``) and the output projection (a linear map to ``dim_out``) differ.

With ``probabilistic=True`` the output is a Gaussian per position: ``project_out`` maps to
``2 * dim_out`` features read as interleaved (mean, log-variance) pairs, and the wrapper returns
``stack((mean, variance))`` of shape (2, b, n, do) (x-transformers' layout), the input of
:class:`x_attn.wrappers.continuous_autoregressive.ContinuousAutoregressiveWrapper`'s Gaussian
negative log-likelihood.

Shape legend: b batch, n sequence, d model dim, di input dim, do output dim, p prepended.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from x_attn.cache import KVCache
from x_attn.layers.intermediates import keep_hiddens
from x_attn.layers.stack import AttentionLayers, LayerIntermediates
from x_attn.routing import checked_keywords
from x_attn.serialization import records_config
from x_attn.utils import check_positive_int, default
from x_attn.validation_inputs import check_bool_mask, check_float_input
from x_attn.wrappers.cache_input import new_inputs, new_positions
from x_attn.wrappers.embedding import zero_masked
from x_attn.wrappers.sequence import SequenceWrapper
from x_attn.wrappers.training_aids import lens_mask


@records_config
class ContinuousTransformerWrapper(SequenceWrapper):
    """Sequence model on continuous inputs (b, n, di) around an :class:`AttentionLayers` stack.

    Args:
        max_seq_len: longest sequence absolute positions cover; None: no absolute positions.
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
        project_in / project_out: custom input / output modules instead of the linear maps
            of ``dim_in`` / ``dim_out`` (give one of each pair).
        post_emb_norm: LayerNorm after the projected inputs and positions.
        average_pool_embed: masked mean over the positions, (b, do).
        probabilistic: output mean and variance per feature (see the module docstring).
        use_identity_if_same_dim: no linear map where ``dim_in`` / ``dim_out`` equal the
            model dim.
    """

    @checked_keywords
    def __init__(
        self,
        *,
        attn_layers: AttentionLayers,
        max_seq_len: int | None = None,
        dim_in: int | None = None,
        dim_out: int | None = None,
        emb_dropout: float = 0.0,
        use_abs_pos_emb: bool = True,
        scaled_sinu_pos_emb: bool = False,
        num_memory_tokens: int | None = None,
        max_mem_len: int = 0,
        sinusoidal_pos_emb: bool = False,
        project_in: nn.Module | None = None,
        project_out: nn.Module | None = None,
        post_emb_norm: bool = False,
        average_pool_embed: bool = False,
        probabilistic: bool = False,
        use_identity_if_same_dim: bool = False,
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
            post_emb_norm=post_emb_norm,
            average_pool_embed=average_pool_embed,
        )
        owner = "ContinuousTransformerWrapper"
        for name, value in (("dim_in", dim_in), ("dim_out", dim_out)):
            if value is not None:
                check_positive_int(name, value, owner)
        dim = attn_layers.dim
        self.probabilistic = probabilistic
        self.dim_in = None if project_in is not None else default(dim_in, dim)
        self.dim_out = default(dim_out, dim)
        same = use_identity_if_same_dim
        self.project_in = _projection("in", dim_in, project_in, dim_in, dim, same)
        width = self.dim_out * (2 if probabilistic else 1)
        needed = dim_out if not probabilistic else width
        self.project_out = _projection("out", dim_out, project_out, dim, needed, same)

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
        lens: Tensor | None = None,
        prepend_embeds: Tensor | None = None,
        prepend_mask: Tensor | None = None,
        sum_embeds: Tensor | None = None,
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
            lens / prepend_embeds / prepend_mask / sum_embeds: as in TransformerWrapper.
            **kwargs: context, context_mask, attn_mask, seq_start_pos, passed to the stack.

        Returns:
            The output, followed when asked, in this order, by mems (``return_mems``),
            attention maps (``return_attn``), the KV cache (``return_cache``) and
            intermediates (``return_intermediates``).
        """
        owner = "ContinuousTransformerWrapper"
        width = self.dim_in if self.dim_in is not None else x.shape[-1]
        check_float_input("x", x, width, owner)
        if lens is not None:
            if mask is not None:
                raise ValueError(f"{owner}: give 'mask' or 'lens', not both")
            mask = lens_mask(lens, x.shape[1], owner)
        check_bool_mask("mask", mask, tuple(x.shape[:2]), "batch x sequence, True = real position")
        self._check_whole_sequence(cache, mems, return_cache)
        layers = self.attn_layers.num_cache_entries
        returns_cache, given = return_cache or return_intermediates, x.shape[1]
        cache, x, mask = new_inputs(
            owner, cache, x, mask, input_not_include_cache, layers, returns_cache
        )
        new_positions(owner, kwargs, given, x.shape[1])
        keep_hiddens(kwargs, return_intermediates, return_mems)
        # zeroed before project_in: a NaN there would reach its weight gradient
        out, inter, seq_mask = self._run_stack(
            self.project_in(zero_masked(x, mask)),
            mask,
            mems,
            cache,
            return_attn,
            return_intermediates,
            return_cache=return_cache,
            sum_embeds=sum_embeds,
            prepend_embeds=prepend_embeds,
            prepend_mask=prepend_mask,
            **kwargs,
        )
        out = self._pool(out, seq_mask)
        result = out if return_embeddings else self._output(out)
        return self._package(
            result, inter, mems, return_mems, return_attn, return_intermediates, return_cache
        )

    def _output(self, h: Tensor) -> Tensor:
        """``project_out``; probabilistic: (2, ..., do) stack of mean and variance."""
        out = self.project_out(h)
        if not self.probabilistic:
            return out
        mean, log_var = rearrange(out, "... (d two) -> two ... d", two=2)
        return torch.stack((mean, log_var.exp()))


def _projection(
    side: str,
    given: int | None,
    module: nn.Module | None,
    d_in: int | None,
    d_out: int | None,
    identity_if_same: bool,
) -> nn.Module:
    """``project_in`` / ``project_out``: a custom module, the identity, or a linear map.

    ``given`` is the user's dim_in / dim_out; None (and no module) means no map at all.
    """
    owner = "ContinuousTransformerWrapper"
    if module is not None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"{owner}: 'project_{side}' must be an nn.Module")
        if given is not None:
            raise ValueError(f"{owner}: give 'dim_{side}' or 'project_{side}', not both")
        return module
    if d_in is None or d_out is None or (identity_if_same and d_in == d_out):
        return nn.Identity()
    return nn.Linear(d_in, d_out)
