"""Attention: a fixed pipeline of stages; features attach to one stage each.

project -> transform q/k (positions) -> extend k/v (cache, memory kv) -> mask + bias ->
kernel (chosen per layer from the kernel registry) -> output (merge heads, out projection or AoA).

Shape legend: b batch, n / i queries, j keys, h heads, hk key heads, d model dim,
dh head dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from x_attn.attention.features.catalog import assemble
from x_attn.attention.features.spec import FeatureContext
from x_attn.attention.projections import Projection
from x_attn.cache import KVEntry
from x_attn.config import AttentionConfig
from x_attn.kernels.inputs import AttnInputs
from x_attn.kernels.manual import AttnMaps
from x_attn.kernels.select import KernelChoice, choose_kernel
from x_attn.masks.causal import CAUSAL
from x_attn.masks.spec import AttnMask, Span
from x_attn.positional.context import NO_POSITIONS, PositionContext
from x_attn.routing import build_config
from x_attn.utils import check_positive_int


@dataclass
class AttnIntermediates:
    """What one attention call leaves behind: the kernel used and, on the manual path, scores."""

    kernel: str
    maps: AttnMaps | None = None

    @property
    def logits(self) -> Tensor | None:
        return None if self.maps is None else self.maps.logits

    @property
    def probs(self) -> Tensor | None:
        return None if self.maps is None else self.maps.probs


class Attention(nn.Module):
    """Multi-head (self or cross) attention.

    Args:
        dim: model dimension of the queries' input.
        heads: number of heads.
        causal: bottom-right aligned causal masking (self-attention only).
        dim_context: dimension of the context for cross-attention (default ``dim``).
        config: an :class:`AttentionConfig`; alternatively pass its fields as keywords
            (x-transformers spelling: ``dim_head``, ``flash``, ``num_mem_kv``, ...).
        residual_attn: add the previous layer's logits (RealFormer); set by the stack.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        causal: bool = False,
        dim_context: int | None = None,
        config: AttentionConfig | None = None,
        residual_attn: bool = False,
        flag_prefix: str = "attn_",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if config is not None and kwargs:
            raise TypeError("Attention: pass either config= or keyword options, not both")
        config = config or build_config(AttentionConfig, "Attention", kwargs)
        config.validate("Attention", flag_prefix)
        check_positive_int("dim", dim, "Attention")
        check_positive_int("heads", heads, "Attention")
        self.config, self.heads, self.causal = config, heads, causal
        self.rules = (CAUSAL,) if causal else ()  # mask rules of self-attention calls
        self.scale = config.dim_head**-0.5
        ctx = FeatureContext(dim, heads, dim_context, config, flag_prefix, residual_attn)
        parts = assemble(ctx)
        self.proj: Projection = parts.projection
        for attr, module in parts.extensions:  # registered under their own names (or None)
            setattr(self, attr, module)
        # extend-k/v stage: (k, v, mask, bias) -> (k, v, mask, bias), applied in order
        self.kv_extensions = [module for _, module in parts.extensions if module is not None]
        self.scores = parts.scores
        self.kernel: KernelChoice = choose_kernel(config.flash, [], "Attention", parts.needs)
        self.to_out: nn.Module = parts.output

    @property
    def qk_dim(self) -> int:
        """Per-head dimension of queries and keys (where rotary embeddings act)."""
        return self.proj.qk_dim

    def explain(self) -> str:
        """Which kernel this layer uses by default and why."""
        return f"{self.kernel.name}: {self.kernel.reason}"

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        positions: PositionContext | None = None,
        prev_logits: Tensor | None = None,
        mem: Tensor | None = None,
        cache: KVEntry | None = None,
        return_attn: bool = False,
    ) -> tuple[Tensor, AttnIntermediates]:
        """Attend from ``x`` (b, n, d) to itself, or to ``context`` (b, j, dc).

        Args:
            mask: (b, j) key padding mask over the positional keys (self-attention).
            context_mask: (b, j) padding mask of the context (cross-attention).
            attn_mask: (i, j), (h, i, j) or (b|1, h|1, i, j) bool mask, True = may attend.
            positions: positional tables of this forward (see PositionContext).
            prev_logits: previous layer's logits for residual attention.
            mem: (b, m, d) Transformer-XL memory prepended to the keys/values.
            cache: this layer's KV cache entry; updated in place.
            return_attn: run the manual kernel and return the attention maps.

        Returns:
            (out (b, n, d), intermediates).
        """
        q, k, v, key_mask = self._project(x, context, mask, context_mask, positions, mem, cache)
        bias = positions.bias if (positions is not None and context is None) else None
        i, j = q.shape[-2], k.shape[-2]
        rules = self.rules if context is None else ()
        mask_spec = AttnMask(Span(j - i, j), Span(0, j), rules, key_mask, attn_mask)
        for extension in self.kv_extensions:
            k, v, mask_spec, bias = extension(k, v, mask_spec, bias)
        inputs = AttnInputs(
            q,
            k,
            v,
            bias=bias,
            scale=self.scale,
            dropout=self.config.dropout if self.training else 0.0,
            spec=mask_spec,
        )
        kernel = self.kernel.for_call(return_attn)
        out, maps = kernel.run(inputs, self.scores.bind(prev_logits), cache)
        out = rearrange(out, "b h n d -> b n (h d)")
        return self.to_out(out, x), AttnIntermediates(kernel.name, maps)

    def _project(self, x, context, mask, context_mask, positions, mem, cache):
        """Project stage + cache extension; returns q, k, v, key mask."""
        if context is not None:
            q = self.proj.queries(x, NO_POSITIONS)
            if cache is not None and cache.k is not None:
                return q, cache.k, cache.v, context_mask
            k, v = self.proj.expand(self.proj.keys(context, NO_POSITIONS))
            if cache is not None:
                cache.k, cache.v = k, v
            return q, k, v, context_mask
        kv_in = x if mem is None else torch.cat((mem, x), dim=1)
        positions = positions or PositionContext(x.shape[1], kv_in.shape[1])
        q = self.proj.queries(x, positions.rows(positions.queries))
        new_keys = Span(positions.stop - kv_in.shape[1], positions.stop)
        k, v = self.proj.expand(self.proj.keys(kv_in, positions.rows(new_keys)))
        if cache is not None:
            k, v = cache.append(k, v)
        return q, k, v, mask
