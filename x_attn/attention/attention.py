"""Attention: a fixed pipeline of stages; features attach to one stage each.

resolve the call (self- or cross-attention, :mod:`x_attn.attention.calls`) -> project (queries;
the projection applies "qk" transforms such as QK-norm, then positions) -> cache entry (takes
the new key rows, projects them, transforms their values, returns every key held, with
positions and padding) -> mask description + bias of (queries, held keys) -> extend k/v (the
caller's additional keys, memory kv, null keys) -> query-dependent bias (Shaw's relative keys)
-> kernel (chosen per layer from the kernel registry; a plain layer's call that hides no key
calls fused SDPA directly) -> per-head output stages (with the query input) -> output (merge
heads, out projection or AoA). The parts come from the feature catalog; forward has no flag if.

Shape legend: b batch, n / i queries, j keys, h heads, hk key heads, d model dim,
dh head dim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import Tensor, nn

from x_attn.attention.additional_kv import prepend_keys
from x_attn.attention.calls import AttendCall, cross_call, self_call
from x_attn.attention.features.catalog import assemble
from x_attn.attention.features.inverted import query_padding_mask
from x_attn.attention.features.spec import FeatureContext
from x_attn.attention.features.stages import BiasCall, BoundKeys
from x_attn.attention.muon_clip import attention_muon_parameters, qk_clip_
from x_attn.attention.projections import Projection
from x_attn.attention.projections.multihead import merge_heads
from x_attn.cache import CacheEntry, ContextEntry
from x_attn.config import AttentionConfig, LayersConfig
from x_attn.kernels.inputs import AttnInputs, widen_to_values
from x_attn.kernels.manual import AttnMaps
from x_attn.kernels.registry import Need
from x_attn.kernels.sdpa import unmasked_sdpa
from x_attn.kernels.select import KernelChoice, choose_kernel
from x_attn.masks.causal import CAUSAL
from x_attn.masks.spec import AttnMask
from x_attn.positional.context import PositionContext
from x_attn.routing import build_config
from x_attn.utils import check_positive_int, default

# one call's (q, k, v, mask, bias) after the k/v extensions (the projection's Operands + mask, bias)
CallOperands = tuple[Tensor, Tensor, Tensor, AttnMask, Tensor | None]


@dataclass
class AttnIntermediates:
    """What one attention call leaves behind: the kernel used, on the manual path the scores,
    and the raw values of the key rows it projected when the layer transforms its values (the
    first layer's are the value residual of the later ones), and the kernel's inputs (for
    QK-clip's logit maxima, :mod:`x_attn.attention.muon_clip`)."""

    kernel: str
    maps: AttnMaps | None = None
    values: Tensor | None = None
    inputs: AttnInputs | None = None

    @property
    def logits(self) -> Tensor | None:
        return None if self.maps is None else self.maps.logits

    @property
    def probs(self) -> Tensor | None:
        return None if self.maps is None else self.maps.probs


# stack flags whose position bias every self-attention kernel must add to its logits
BIAS_FLAGS = ("rel_pos_bias", "alibi_pos_bias", "dynamic_pos_bias")


def bias_needs(stack: LayersConfig | None) -> list[Need]:
    """The "bias" kernel need of each position bias the stack turns on (none on its own)."""
    return [Need(flag, "bias") for flag in BIAS_FLAGS if stack and getattr(stack, flag)]


class Attention(nn.Module):
    """Multi-head (self or cross) attention.

    Args:
        dim: model dimension of the queries' input.
        heads: number of heads.
        causal: bottom-right aligned causal masking (self-attention only).
        dim_context: width of the context for cross-attention (default: the config's
            ``dim_context``, else ``dim``); x-transformers' ``attn_dim_context``.
        config: an :class:`AttentionConfig`; alternatively pass its fields as keywords
            (x-transformers spelling: ``dim_head``, ``flash``, ``num_mem_kv``, ...).
        residual_attn: add the previous layer's logits (RealFormer); set by the stack.
        rotary_dim: the stack's rotary dim, for projections that size their rotary part by it
            (MLA's decoupled rotary dims); None when the stack has no rotary positions.
        layer_index: the layer's index among its stack's self- (or cross-) attention layers,
            from 0; set by the stack (features that act on chosen layers, or scale with depth,
            read it).
        stack_config: the stack's flags, given by a stack to its self-attention layers
            (positional features such as ``shaw_rel_pos`` live in each layer).
        value_residual_role: the layer's value residual role ("source", "fixed" or "learned",
            see :class:`x_attn.attention.features.spec.FeatureContext`); set by the stack.
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
        rotary_dim: int | None = None,
        layer_index: int = 0,
        value_residual_role: str | None = None,
        stack_config: LayersConfig | None = None,
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
        self.flag_prefix = flag_prefix
        self.dim, self.dim_context = dim, _context_width(dim, dim_context, config, flag_prefix)
        if isinstance(layer_index, bool) or not isinstance(layer_index, int) or layer_index < 0:
            raise ValueError(f"Attention: 'layer_index' must be an int >= 0, got {layer_index!r}")
        ctx = FeatureContext(
            dim,
            heads,
            self.dim_context,
            config,
            flag_prefix,
            residual_attn,
            layer=layer_index,
            value_residual=value_residual_role,
            rotary_dim=rotary_dim,
            stack=stack_config,
            causal=causal,
        )
        parts = assemble(ctx)
        self.proj: Projection = parts.projection
        self.scale = parts.scale  # a feature's (QK-norm), the projection's or dim_head^-0.5
        for attr, module in parts.named:  # registered under their own names (or None)
            setattr(self, attr, module)
        # bias stages, after extend k/v: (BiasCall, bias, hooks) -> (bias, hooks), in order
        self.bias_stages = parts.biases
        # extend-k/v stage: (k, v, mask, bias) -> (k, v, mask, bias), applied in order
        self.kv_extensions = list(parts.extensions)
        self.value_transforms = parts.values  # values of the new key rows, before the cache
        self.free_value_maps = tuple(t for t in parts.values if t.free_values)  # also extra ones
        # per-head output stages, in catalog order: (out per head, query input) -> out per head
        self.head_stages = parts.head_stages
        self.scores = parts.scores
        self.kernel: KernelChoice = choose_kernel(
            config.flash, [], "Attention", [*parts.needs, *bias_needs(stack_config)]
        )
        self.to_out: nn.Module = parts.output
        self.new_entry = parts.new_entry
        self.neighbour_flags = parts.neighbour_flags
        # why this layer cannot decode with a KV cache or take memories (None: it can)
        self.uncacheable_reason: str | None = parts.uncacheable
        self.hides_padded_queries = parts.hides_padded_queries  # inverted attention
        # mask rules of self-attention calls, by causality (a call may override the layer's)
        self._rules = {True: (CAUSAL, *parts.rules), False: parts.rules}
        self.rules = self._rules[causal]
        # nothing between projections and fused SDPA: calls that hide no key run it directly
        stages = (parts.scores.features, parts.biases, parts.extensions, parts.values)
        plain = not any(stages) and not parts.head_stages and parts.scores.normalizer is None
        self._plain_sdpa = plain and self.kernel.name == "sdpa"

    @property
    def qk_dim(self) -> int:
        """Per-head dimension of queries and keys (where rotary embeddings act)."""
        return self.proj.qk_dim

    @property
    def qk_dim_flags(self) -> tuple[str, ...]:
        """The flags that set :attr:`qk_dim` (``attn_dim_head``, ...), for error messages."""
        return tuple(self.flag_prefix + name for name in self.proj.qk_dim_options)

    @property
    def takes_global_tokens(self) -> bool:
        """Whether a call's ``global_mask`` changes this layer (a sliding window's rule)."""
        return any(rule.takes_global_tokens for rule in self.rules)

    def explain(self) -> str:
        """Which kernel this layer uses by default and why."""
        return f"{self.kernel.name}: {self.kernel.reason}"

    def qk_clip_(self, intermediates: AttnIntermediates | Tensor, tau: float = 100.0) -> Tensor:
        """QK-clip (MuonClip, arXiv 2507.20534): scale down the query/key maps of every head
        whose largest logit in ``intermediates`` (a forward's, or (b, h, i, j) logits) exceeds
        ``tau``; returns the per-head logit factors. See :mod:`x_attn.attention.muon_clip`."""
        return qk_clip_(self, intermediates, tau)

    def muon_parameters(self) -> list[nn.Parameter]:
        """The matrices to optimise with Muon: the value map and the output stage."""
        return attention_muon_parameters(self)

    def new_cache_entry(self) -> CacheEntry:
        """A cache entry for this layer's self-attention keys."""
        return self.new_entry()

    def new_context_entry(self) -> CacheEntry:
        """A cache entry for a cross-attention context (projected once)."""
        return ContextEntry()

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
        mem_mask: Tensor | None = None,
        cache: CacheEntry | None = None,
        return_attn: bool = False,
        causal: bool | None = None,
        global_mask: Tensor | None = None,
        value_residual: Tensor | None = None,
        additional_key_values: tuple[Tensor, Tensor] | None = None,
        additional_key_value_mask: Tensor | None = None,
        return_intermediates: bool = False,
    ) -> Tensor | tuple[Tensor, AttnIntermediates]:
        """Attend from ``x`` (b, n, d) to itself, or to ``context`` (b, j, dc).

        Args:
            mask: (b, n) key padding of ``x`` (self-attention).
            context_mask: (b, j) padding mask of the context (cross-attention).
            attn_mask: (i, k), (h, i, k) or (b|1, h|1, i, k) bool mask, True = may attend,
                over the positional keys held (right-aligned: the last column is the newest key).
            positions: positional tables of this forward (see PositionContext).
            prev_logits: previous layer's logits for residual attention.
            mem: (b, m, d) Transformer-XL memory prepended to the keys/values.
            mem_mask: (b, m) padding of ``mem`` (True = real), or None when all rows are real.
            cache: this layer's cache entry (see :meth:`new_cache_entry`); updated in place.
            return_attn: run a kernel that forms the scores and return the attention maps.
            causal: this call's self-attention causality instead of the layer's (None: the
                layer's own).
            global_mask: (b, n) bool, True = a global token of ``x`` (self-attention without a
                cache): it attends to every key and every query attends to it, on layers with
                a sliding window (Longformer); other layers see every key anyway.
            value_residual: (b, hv, j, dv) the first layer's raw values of the same key rows,
                mixed into this layer's values (value residual learning; set by the stack).
            additional_key_values: (k, v) of shapes (b, ha, m, dq) and (b, ha, m, dv): keys and
                values without positions, prepended to this call's keys (ha divides the heads).
            additional_key_value_mask: (b, m) bool, True = that additional key may be attended.
            return_intermediates: also return the :class:`AttnIntermediates` (kernel, maps,
                values); ``return_attn=True`` implies it.

        Returns:
            out (b, n, d), or (out, intermediates) as in x-transformers.
        """
        call = self._call(
            x,
            context,
            mask,
            context_mask,
            attn_mask,
            positions,
            (mem, mem_mask),
            cache,
            causal,
            global_mask,
        )
        keys = BoundKeys(self.proj, self.value_transforms, value_residual)
        extra = (additional_key_values, additional_key_value_mask)
        operands, finish = self._operands(x, call, keys, extra)
        out, maps, kernel_name, inputs = self._run_kernel(
            x, call, operands, prev_logits, return_attn
        )
        out = self._output(finish(out), x, operands[2])
        if not (return_intermediates or return_attn):
            return out
        return out, AttnIntermediates(kernel_name, maps, keys.values, inputs)

    def _operands(
        self, x: Tensor, call: AttendCall, keys: BoundKeys, extra: tuple[Any, Any]
    ) -> tuple[CallOperands, Callable[[Tensor], Tensor]]:
        """((q, k, v, mask, bias), finish) of one call: the cache entry updated with the call's
        key rows, then the additional keys and the kv extensions prepended; ``finish`` maps
        the kernel's output back (see the projection's ``operands``)."""
        proj = self.proj
        q = proj.queries(x, call.query_rows)
        held = call.entry.update(call.keys, keys)
        q, k, v, finish = proj.operands(q, held.payload)
        mask_spec = AttnMask(
            call.queries, held.span, call.rules, held.mask, call.user_mask, pinned=held.pinned
        )
        bias = call.positions.bias_for(call.queries, held.span, held.pinned)
        free = tuple(partial(t, rows=None, residual=None) for t in self.free_value_maps)
        k, v, mask_spec, bias = prepend_keys(
            (k, v, mask_spec, bias), *extra, self.heads, value_maps=free
        )
        for extension in self.kv_extensions:
            k, v, mask_spec, bias = extension(k, v, mask_spec, bias)
        return (q, k, v, mask_spec, bias), finish

    def _run_kernel(
        self,
        x: Tensor,
        call: AttendCall,
        operands: CallOperands,
        prev_logits: Tensor | None,
        return_attn: bool,
    ) -> tuple[Tensor, AttnMaps | None, str, AttnInputs]:
        """The score hooks and bias stages bound to this call, then the kernel: (out, maps,
        kernel name, the kernel's inputs)."""
        q, k, v, mask_spec, bias = operands
        dropout = self.config.dropout if self.training else 0.0
        if self._plain_sdpa and not return_attn:  # e.g. a decode step
            out = unmasked_sdpa(q, k, v, bias, dropout, self.scale, mask_spec)
            if out is not None:
                return out, None, "sdpa", AttnInputs(q, k, v, scale=self.scale, spec=mask_spec)
        hooks = self.scores.bind(prev_logits, call.entry, mask_spec)
        bias_call = BiasCall(q, call.positions, mask_spec, x, call.entry)
        for stage in self.bias_stages:
            bias, hooks = stage(bias_call, bias, hooks)
        q, k, width = widen_to_values(q, k, v)  # LASER's float32 exp values of half inputs
        inputs = AttnInputs(q, k, v, bias=bias, scale=self.scale, dropout=dropout, spec=mask_spec)
        kernel = self.kernel.for_call(return_attn)
        with width:
            out, maps = kernel.run(inputs, hooks, call.entry)
        return out, maps, kernel.name, inputs

    def _output(self, out: Tensor, x: Tensor, v: Tensor) -> Tensor:
        """The head stages, then the output stage on the merged heads."""
        for stage in self.head_stages:
            out = stage(out, x)
        # a stage that reads them (a class attribute) also sees the queries' own values: the
        # newest key rows of the call
        reads = getattr(type(self.to_out), "reads_own_values", False)
        return self.to_out(
            merge_heads(out), x, v[:, :, v.shape[2] - x.shape[1] :] if reads else None
        )

    def _call(
        self, x, context, mask, context_mask, attn_mask, positions, mem, cache, causal, marked
    ):
        """Self-attention to ``x`` (and ``mem``), or cross-attention to ``context``."""
        if marked is not None and (context is not None or cache is not None):
            raise ValueError(
                "global_mask marks global tokens of a self-attention call without a KV cache; "
                "give the positions at construction (attn_global_tokens) to decode with a cache"
            )
        if context is None and self.dim_context != self.dim:
            raise ValueError(
                f"Attention: this layer reads keys of width dim_context={self.dim_context}, "
                f"but was called without a context (self-attention keys come from x, width "
                f"{self.dim}); pass context=, or build it without dim_context"
            )
        if context is not None and context.shape[-1] != self.dim_context:
            raise ValueError(
                f"Attention: 'context' has width {context.shape[-1]}, but this layer reads "
                f"width {self.dim_context}; build it with dim_context={context.shape[-1]} "
                f"(cross_attn_dim_context in a stack)"
            )
        if (
            context is None
            and self.uncacheable_reason
            and (cache is not None or mem[0] is not None)
        ):
            given = "cache" if cache is not None else "mem"
            raise ValueError(f"Attention: '{given}' cannot be used: {self.uncacheable_reason}")
        if context is None and self.hides_padded_queries:
            raise ValueError(
                "Attention: inverted attention (softmax over the queries) is implemented for "
                "cross-attention calls; pass context="
            )
        if context is None:
            entry = cache if cache is not None else self.new_cache_entry()
            rules = self.rules if causal is None else self._rules[bool(causal)]
            return self_call(x, *mem, mask, attn_mask, positions, entry, rules, marked)
        if causal is not None:
            raise ValueError(
                "Attention: 'causal' sets the causality of self-attention; a cross-attention "
                "call (with a context) has none, so drop causal="
            )
        entry = cache if cache is not None else self.new_context_entry()
        if self.hides_padded_queries and mask is not None:
            attn_mask = query_padding_mask(mask, context.shape[1], attn_mask)
        return cross_call(x, context, context_mask, attn_mask, entry, positions)


def _context_width(dim: int, given: int | None, config: AttentionConfig, prefix: str) -> int:
    """The key/value input width: ``dim_context=`` or the config's, which must agree."""
    if given is not None:
        check_positive_int("dim_context", given, "Attention")
    if given is not None and config.dim_context is not None and given != config.dim_context:
        raise ValueError(
            f"Attention: dim_context={given} and {prefix}dim_context={config.dim_context} "
            "disagree; give the context width once"
        )
    return default(given, default(config.dim_context, dim))
