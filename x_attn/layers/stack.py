"""AttentionLayers and the Encoder / Decoder / CrossAttender stacks.

Shape legend: b batch, n sequence, d model dim, m memory length, j context length.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from x_attn.attention.attention import Attention
from x_attn.cache import KVCache
from x_attn.cache.mems import mems_mask
from x_attn.layers.activations import softclamp
from x_attn.layers.build import build_layers, make_condition_mlp, make_final_norm
from x_attn.layers.conditioning import apply_norm, stack_condition
from x_attn.layers.feedforward import FeedForward
from x_attn.layers.intermediates import LayerIntermediates
from x_attn.layers.mv_split import CACHE_REASON as MV_SPLIT_CACHE_REASON
from x_attn.layers.plan import make_plan
from x_attn.layers.reinject import MEMS_REASON as REINJECT_MEMS_REASON
from x_attn.layers.reinject import build_reinject
from x_attn.layers.run import run_layers
from x_attn.layers.run_checks import working_cache
from x_attn.layers.stack_cache import empty_cache, shift_runs
from x_attn.layers.stack_call import (
    checked_mems,
    checked_order,
    per_run_inputs,
    position_context,
    refuse_reversible_state,
    stack_state,
)
from x_attn.layers.stack_inputs import check_stack_inputs
from x_attn.layers.unet import UNetSkips
from x_attn.positional.stack_positions import StackPositions
from x_attn.routing import checked_keywords, route_layer_kwargs
from x_attn.serialization import records_config
from x_attn.validation import merge_kv_mask

# stack flags whose position bias every self-attention kernel must add to its logits
BIAS_FLAGS = ("rel_pos_bias", "alibi_pos_bias")


@records_config
class AttentionLayers(nn.Module):
    """A stack of attention / cross-attention / feed-forward layers built from flat flags.

    Args:
        dim: model dimension.
        depth: number of (attention, feed-forward) blocks (None: with custom_layers).
        heads: attention heads.
        causal: causal self-attention (Decoder).
        cross_attend: add cross-attention to a ``context`` in every block.
        only_cross: cross-attention instead of self-attention.
        **kwargs: ``attn_*``, ``cross_attn_*``, ``ff_*`` and stack flags (see README flag table).
    """

    def __init__(
        self,
        dim: int,
        depth: int | None = None,
        heads: int = 8,
        causal: bool = False,
        cross_attend: bool = False,
        only_cross: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        flags = dict(
            dim=dim,
            depth=depth,
            heads=heads,
            causal=causal,
            cross_attend=cross_attend,
            only_cross=only_cross,
            **kwargs,
        )
        self.config = route_layer_kwargs(owner, flags)
        cfg = self.config
        self.dim, self.causal = cfg.dim, cfg.causal
        self.plan = make_plan(cfg, owner)
        self.layer_types = self.plan.types  # the modules built
        self.types = self.plan.run_types  # the layers run, in order (a module may run again)
        self.cross_attend = "c" in self.types  # a 'c' layer needs a context, however it came
        self.layers = build_layers(cfg, self.plan)
        self.condition_mlp = make_condition_mlp(cfg)
        # rotary needs self-attention (refused without): its dims come from the self-attention
        selfs = [lay.block for t, lay in zip(self.layer_types, self.layers) if t == "a"]
        first = selfs[0] if selfs else None
        fixed = next((blk.proj.rotary_dim for blk in selfs if blk.proj.rotary_dim), None)
        self.positions = StackPositions(
            cfg,
            first.qk_dim if first else cfg.attn.dim_head,
            owner,
            rotary_dim=fixed,
            qk_flags=first.qk_dim_flags if first else ("attn_dim_head",),
        )
        self.final_norm = make_final_norm(cfg)
        self.reinject_input_proj, self.learned_reinject_input_gate = build_reinject(
            cfg.dim, cfg.reinject_input, cfg.learned_reinject_input_gate
        )
        streams = {"reversible": cfg.reversible, "resi_dual": cfg.resi_dual}
        self.unet = UNetSkips(cfg.dim, self.plan, owner, streams) if cfg.unet_skips else None
        # not registered as a submodule: it only re-wires the modules of self.layers
        object.__setattr__(self, "reversible", None)
        if cfg.reversible:
            from x_attn.layers.reversible_stack import build_reversible

            object.__setattr__(self, "reversible", build_reversible(self.layers, self.types))

    @property
    def num_attention_layers(self) -> int:
        """Attention runs (self and cross) per forward: one cache entry each."""
        return sum(t in "ac" for t in self.types)

    @property
    def num_self_attention_layers(self) -> int:
        """Self-attention runs per forward: one Transformer-XL memory each."""
        return self.types.count("a")

    @property
    def num_cache_entries(self) -> int:
        """Entries of this stack's KV cache: the attention runs, then the shifted runs."""
        return self.num_attention_layers + len(shift_runs(self, self.plan.order))

    @property
    def uncacheable_reason(self) -> str | None:
        """Why this stack cannot decode with a KV cache, or None when it can.

        Generation (AutoregressiveWrapper) reads ``uncacheable_reason`` from every submodule and
        falls back to the uncached path when one is set.
        """
        if self.reversible is not None:
            return "reversible=True keeps no per-layer keys/values (two-stream update)"
        if not self.causal and shift_runs(self, self.plan.order):
            return "shift_tokens in a non-causal stack reads later tokens"
        if self.config.mv_split_residual:
            return MV_SPLIT_CACHE_REASON
        return self._attention_reason()

    def _attention_reason(self) -> str | None:
        """The first self-attention layer's reason not to cache (e.g. attn_lsh), or None."""
        blocks = [layer.block for layer in self.layers if layer.kind == "a"]
        return next((b.uncacheable_reason for b in blocks if b.uncacheable_reason), None)

    @property
    def mems_unsupported_reason(self) -> str | None:
        """Why this stack cannot take Transformer-XL memories, or None when it can."""
        if self.reversible is not None:
            return "reversible=True keeps no per-layer hidden states"
        if any(self.layers[i].kind != "a" for i in shift_runs(self, self.plan.order)):
            return (
                "shift_tokens on a feed-forward or cross-attention layer needs that layer's "
                "earlier inputs, which mems (self-attention inputs) do not hold"
            )
        if self.config.mv_split_residual:
            return MV_SPLIT_CACHE_REASON
        if self.config.reinject_input:
            return REINJECT_MEMS_REASON
        return self._attention_reason()

    def explain(self) -> list[str]:
        """One line per attention layer: which kernel it uses by default and why."""
        runs = [(i, self.layers[m]) for i, m in enumerate(self.plan.order)]
        return [
            f"layer {i} ({layer.kind}): {layer.block.explain()}"
            for i, layer in runs
            if layer.kind in "ac"
        ]

    @checked_keywords
    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        mems: list[Tensor] | None = None,
        cache: KVCache | LayerIntermediates | None = None,
        return_hiddens: bool = False,
        return_attn: bool = False,
        condition: Tensor | None = None,
        causal: bool | None = None,
        global_mask: Tensor | None = None,
        layers_execute_order: tuple[int, ...] | None = None,
        repeat_blocks: Any = None,
        pos: Tensor | None = None,
        context_pos: Tensor | None = None,
        *,
        self_attn_kv_mask: Tensor | None = None,
        self_attn_additional_kv: list | LayerIntermediates | None = None,
        additional_kv_mask: Tensor | None = None,
        detach_additional_kv: bool = False,
        route_additional_kv_to_top: bool = True,
        start_cache: bool = True,
        keep_hiddens: bool = True,
        cross_attn_kv_residuals: list[Tensor | None] | Tensor | None = None,
        deep_embeds_and_ids: tuple[Tensor, Tensor] | None = None,
    ):
        """Run the stack on ``x`` (b, n, d).

        Args:
            context: (b, j, d) for cross-attending stacks.
            mask: (b, n) key padding mask, True = real token. Padding takes no position:
                each row numbers its real positions 0, 1, 2, ... (relative schemes).
            context_mask: (b, j) padding mask of ``context``.
            attn_mask: bool mask, True = may attend, k = keys with positions: (n, k),
                (h, n, k) per head (as in x-transformers) or (b, h, n, k), where b and h may
                be 1 to broadcast.
            mems: Transformer-XL memories, one (b, m, d) tensor per self-attention run (a
                :class:`x_attn.cache.Mems` also carries their padding). With a cache, mems
                are the context before its first position: the first call (empty cache)
                takes them in, later calls find them in the cache.
            cache: a :class:`x_attn.cache.KVCache`, or the intermediates a call with
                ``return_hiddens=True`` returned (x-transformers style); ``x`` then holds only
                the new rows. The cache is left as it was: the updated copy is returned in the
                intermediates (``return_hiddens=True``).
            return_hiddens: also return a :class:`LayerIntermediates` (with a cache to
                continue from, for a causal stack that can cache).
            return_attn: run the manual kernel everywhere and collect attention maps.
            condition: (b, dc) or (b, n, dc) for adaptive norms / layerscale.
            causal: this call's self-attention causality instead of the stack's (a cached
                call keeps the stack's).
            global_mask: (b, n) bool, True = global token (Longformer's global attention):
                it attends to every key and every query attends to it, in the sliding-window
                layers (attn_window_size); without a cache. For decoding with a cache, give
                the positions at construction (attn_global_tokens).
            layers_execute_order: module indices to run, in order, for this call.
            repeat_blocks: blocks to run again for this call (see x_attn.layers.plan).
            pos: positions of this call's tokens for the positional methods, (n,), (b, n) or,
                for an additive bias only, (b, heads, n); default: their index in the stream
                (see :mod:`x_attn.positional.custom`). A cache keeps them for later calls.
            context_pos: (j,) or (b, j) positions of ``context`` for rotary embeddings in
                cross-attention.
            self_attn_kv_mask: (b, k) bool over the keys self-attention holds (cached,
                memories, new), True = may attend; combined with ``mask`` and ``attn_mask``.
            self_attn_additional_kv: (k, v) pairs without positions prepended to the keys of
                the self-attention runs (k (b, ha, m, dq), v (b, ha, m, dv), ha dividing the
                heads; None for a run without), or the intermediates of a model run with a
                cache (its self-attention keys and values).
            additional_kv_mask: (b, m) bool, True = that additional key may be attended.
            detach_additional_kv: stop gradients into the additional keys and values.
            route_additional_kv_to_top: the last pairs go to the top layers (default), else
                the first pairs to the bottom layers.
            start_cache: with ``return_hiddens=True`` and no ``cache``, start a cache that the
                intermediates carry (False: they carry none; a wrapper that starts its own
                cache only when asked passes False, so a training forward copies no keys).
            keep_hiddens: with ``return_hiddens=True``, fill the per-layer lists of the
                intermediates (``hiddens``, ``layer_hiddens``, ``attn_intermediates``). False
                leaves them empty (the cache, mask and attention maps still come back): a
                caller that reads none of them holds no layer's activations past its run, so an
                inference forward's peak memory does not grow with depth. Without
                ``return_hiddens`` nothing is kept either way.
            cross_attn_kv_residuals: one (b, j, dc) tensor (or None) per cross-attention run,
                or one (runs, b, j, dc) tensor: added to the context that run's keys and values
                read. With a cache the context is projected at the first call, as ``context``.
            deep_embeds_and_ids: (table (V, runs, d), ids (b, t)): feed-forward run k scales
                its output by ``table[id, k]`` on the last t rows (see
                :mod:`x_attn.layers.deep_embed`; TransformerWrapper's ``ff_deep_embed``).
        """
        b, n = x.shape[:2]
        requested = (layers_execute_order, repeat_blocks)
        order = checked_order(self, x, requested, mems, cache, causal, (global_mask, mask))
        # per-call global tokens are not kept by a cache: no cache to continue from is started
        hiddens_cache = return_hiddens and global_mask is None
        if cache is not None or start_cache:
            cache = working_cache(self, cache, b, hiddens_cache, order, causal)
        mem_len = checked_mems(self, mems, b, x.dtype, cache, order)
        kept = cache.kept if cache is not None else 0  # < past once a cache has slid
        k_len = kept + mem_len + n
        attn_mask = check_stack_inputs(self, x, context, mask, context_mask, attn_mask, k_len)
        attn_mask = merge_kv_mask(self_attn_kv_mask, attn_mask, b, n, k_len)
        additional = (
            self_attn_additional_kv,
            additional_kv_mask,
            detach_additional_kv,
            route_additional_kv_to_top,
        )
        per_run = per_run_inputs(
            self, order, n, context, additional, cross_attn_kv_residuals, deep_embeds_and_ids
        )
        condition = stack_condition(self, condition, b, n, mems)
        mem_mask = mems_mask(mems)
        # tables once per forward, from the oldest position a layer holds to the newest query
        positions, values, real = position_context(
            self, x, (pos, context_pos), context, cache, (mems, mem_mask, mask)
        )
        if self.reversible is not None:
            per_call = (mems, cache, self_attn_additional_kv, global_mask, per_run["ff_scales"])
            refuse_reversible_state(return_attn, per_call)
            from x_attn.layers.reversible_stack import run_reversible_stack

            out, inter = run_reversible_stack(self, x, mask, attn_mask, positions)
            return (out, inter) if return_hiddens else out
        inter = LayerIntermediates(cache=cache, mask=mask)
        state = dict(
            **per_run,
            **stack_state(self, x, cache, order, causal),
            context=context,
            context_mask=context_mask,
            attn_mask=attn_mask,
            positions=positions,
            mask=mask,
            mems=mems,
            mem_mask=mem_mask,
            return_attn=return_attn,
            return_hiddens=return_hiddens,
            keep_hiddens=return_hiddens and keep_hiddens,
            condition=condition,
            additional_kv_mask=additional_kv_mask,
            global_mask=global_mask,
        )
        x = run_layers(list(self.layers), order, x, state, inter)
        if state["keep_hiddens"]:
            inter.layer_hiddens.append(x)
        if cache is not None:
            cache.advance(mem_len + n, real)
            cache.position_values = values
        out = self._final(x, state["dual"], condition)
        return (out, inter) if return_hiddens else out

    def _final(self, x: Tensor, dual, condition: Tensor | None) -> Tensor:
        """Soft clamp, then the final norm (ResiDual: x + final_norm(dual stream))."""
        if self.config.softclamp_output:
            x = softclamp(x, self.config.softclamp_output_value)
        if dual is not None:
            return dual.output(x, lambda t: apply_norm(self.final_norm, t, condition))
        return apply_norm(self.final_norm, x, condition)

    @property
    def needs_condition(self) -> bool:
        """Whether forward needs ``condition=`` (adaptive norms or layerscale)."""
        cfg = self.config
        return cfg.norm.startswith("adaptive_") or cfg.use_adaptive_layerscale

    def muon_parameters(self) -> list[nn.Parameter]:
        """The matrices to optimise with Muon, from every attention and feed-forward block."""
        blocks = (m for m in self.modules() if isinstance(m, Attention | FeedForward))
        return [p for block in blocks for p in block.muon_parameters()]

    def attn_qk_clip_(self, intermediates: LayerIntermediates, tau: float = 100.0) -> None:
        """QK-clip (arXiv 2507.20534) every attention run of the forward that returned
        ``intermediates`` (``return_hiddens=True``) on its own layer."""
        runs = getattr(intermediates, "attn_runs", None)
        if not runs:
            raise ValueError(
                "attn_qk_clip_: pass the intermediates of a forward with return_hiddens=True "
                "(return_intermediates=True on a wrapper)"
            )
        for index, found in zip(runs, intermediates.attn_intermediates, strict=True):
            self.layers[index].block.qk_clip_(found, tau)

    def new_cache(self) -> KVCache:
        """An empty cache with the entry each attention (and shifted) run creates for itself."""
        return empty_cache(self)


@records_config
class Encoder(AttentionLayers):
    """Bidirectional stack (BERT-like)."""

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("causal"):
            raise ValueError("Encoder is never causal; use Decoder for causal=True")
        super().__init__(**kwargs)


@records_config
class Decoder(AttentionLayers):
    """Causal stack (GPT-like)."""

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("causal") is False:
            raise ValueError("Decoder is always causal; use Encoder for causal=False")
        kwargs["causal"] = True
        super().__init__(**kwargs)


@records_config
class CrossAttender(AttentionLayers):
    """Cross-attention only stack: queries from ``x`` attend to ``context``."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cross_attend", True)
        kwargs.setdefault("only_cross", True)
        super().__init__(**kwargs)
