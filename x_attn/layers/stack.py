"""AttentionLayers and the Encoder / Decoder / CrossAttender stacks.

Shape legend: b batch, n sequence, d model dim, m memory length, j context length.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from x_attn.attention.attention import Attention
from x_attn.cache import CacheEntry, KVCache
from x_attn.cache.kv_cache import stale_loop_message
from x_attn.cache.mems import mems_mask
from x_attn.layers.feedforward import FeedForward
from x_attn.layers.intermediates import LayerIntermediates
from x_attn.layers.norms import make_norm
from x_attn.layers.pattern import macaron_ff_scale
from x_attn.layers.residual import make_residual
from x_attn.positional.context import PositionContext
from x_attn.positional.custom import position_values, table_values
from x_attn.positional.row_positions import row_positions, rows_mask
from x_attn.positional.stack_positions import StackPositions, requested_rotary_dim
from x_attn.routing import checked_keywords, route_layer_kwargs
from x_attn.serialization import records_config
from x_attn.validation import (
    check_bool_mask,
    check_cache,
    check_float_input,
    check_mems,
    normalize_attn_mask,
    stack_layer_types,
)

# stack flags whose position bias every self-attention kernel must add to its logits
BIAS_FLAGS = ("rel_pos_bias", "alibi_pos_bias")


@records_config
class AttentionLayers(nn.Module):
    """A stack of attention / cross-attention / feed-forward layers built from flat flags.

    Args:
        dim: model dimension.
        depth: number of (attention, feed-forward) blocks.
        heads: attention heads.
        causal: causal self-attention (Decoder).
        cross_attend: add cross-attention to a ``context`` in every block.
        only_cross: cross-attention instead of self-attention.
        **kwargs: ``attn_*``, ``cross_attn_*``, ``ff_*`` and stack flags (see README flag table).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
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
        self.types = stack_layer_types(cfg)
        self.cross_attend = "c" in self.types  # a 'c' layer needs a context, however it came
        scales = macaron_ff_scale(self.types, cfg.macaron)
        self.layers = nn.ModuleList(
            self._make_layer(t, s, self.types[:i].count(t))
            for i, (t, s) in enumerate(zip(self.types, scales))
        )
        # rotary needs self-attention (refused without): its dims come from the first one
        first = next((lay["block"] for t, lay in zip(self.types, self.layers) if t == "a"), None)
        self.positions = StackPositions(
            cfg,
            first.qk_dim if first else cfg.attn.dim_head,
            owner,
            rotary_dim=first.proj.rotary_dim if first else None,
            qk_flags=first.qk_dim_flags if first else ("attn_dim_head",),
        )
        use_final = cfg.pre_norm and not cfg.use_rezero
        self.final_norm = make_norm(cfg.norm, cfg.dim) if use_final else nn.Identity()
        # not registered as a submodule: it only re-wires the modules of self.layers
        object.__setattr__(self, "reversible", None)
        if cfg.reversible:
            from x_attn.layers.reversible_stack import build_reversible

            object.__setattr__(self, "reversible", build_reversible(self.layers, self.types))

    def _make_layer(self, kind: str, scale: float, index: int) -> nn.ModuleDict:
        """Layer ``kind`` ('a', 'c' or 'f'), the ``index``-th of its kind in the stack."""
        cfg = self.config
        if kind == "a":
            block = Attention(
                cfg.dim,
                cfg.heads,
                causal=cfg.causal,
                config=cfg.attn,
                residual_attn=cfg.residual_attn,
                rotary_dim=requested_rotary_dim(cfg),
                layer_index=index,
                stack_config=cfg,
            )
        elif kind == "c":
            block = Attention(
                cfg.dim,
                cfg.heads,
                config=cfg.cross_attn,
                flag_prefix="cross_attn_",
                residual_attn=cfg.cross_residual_attn,
                layer_index=index,
            )
        else:
            block = FeedForward(cfg.dim, cfg.ff)
        norm = nn.Identity() if cfg.use_rezero else make_norm(cfg.norm, cfg.dim)
        residual = make_residual(
            cfg.dim, rezero=cfg.use_rezero, gated=cfg.gate_residual, scale=scale
        )
        return nn.ModuleDict(dict(norm=norm, block=block, residual=residual))

    def _attention_blocks(self) -> list[Attention]:
        return [layer["block"] for layer in self.layers if isinstance(layer["block"], Attention)]

    @property
    def num_attention_layers(self) -> int:
        return len(self._attention_blocks())

    @property
    def num_self_attention_layers(self) -> int:
        return self.types.count("a")

    @property
    def uncacheable_reason(self) -> str | None:
        """Why this stack cannot decode with a KV cache, or None when it can.

        Generation (AutoregressiveWrapper) reads ``uncacheable_reason`` from every submodule and
        falls back to the uncached path when one is set.
        """
        if self.reversible is not None:
            return "reversible=True keeps no per-layer keys/values (two-stream update)"
        return None

    def explain(self) -> list[str]:
        """One line per attention layer: which kernel it uses by default and why."""
        return [
            f"layer {i} ({t}): {layer['block'].explain()}"
            for i, (t, layer) in enumerate(zip(self.types, self.layers))
            if t in "ac"
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
        pos: Tensor | None = None,
        context_pos: Tensor | None = None,
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
            mems: Transformer-XL memories, one (b, m, d) tensor per self-attention layer (a
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
            pos: positions of this call's tokens for the positional methods, (n,), (b, n) or,
                for an additive bias only, (b, heads, n); default: their index in the stream
                (see :mod:`x_attn.positional.custom`). A cache keeps them for later calls.
            context_pos: (j,) or (b, j) positions of ``context`` for rotary embeddings in
                cross-attention.
        """
        check_float_input("x", x, self.dim, type(self).__name__)
        b, n = x.shape[:2]
        cache = self._working_cache(cache, b, return_hiddens)
        mem_len = self._check_mems(mems, b, x.dtype, cache)
        kept = cache.kept if cache is not None else 0  # < past once a cache has slid
        attn_mask = self._check_inputs(
            x, context, mask, context_mask, attn_mask, kept + mem_len + n
        )
        mem_mask = mems_mask(mems)
        # tables once per forward, from the oldest position a layer holds to the newest query
        positions, values, real = self._position_context(
            x, (pos, context_pos), context, cache, (mems, mem_mask, mask)
        )
        if self.reversible is not None:
            if mems is not None or cache is not None or return_attn:
                raise ValueError(
                    "reversible=True stacks run without mems, cache or return_attn "
                    "(the two-stream update has no per-layer hidden state to keep)"
                )
            out, inter = self._run_reversible(x, mask, attn_mask, positions)
            return (out, inter) if return_hiddens else out
        inter = LayerIntermediates(cache=cache, mask=mask)
        state = dict(
            context=context,
            context_mask=context_mask,
            attn_mask=attn_mask,
            positions=positions,
            mask=mask,
            mems=mems,
            mem_mask=mem_mask,
            entries=self._cache_entries(cache),
            return_attn=return_attn,
        )
        x = self._run_layers(x, state, inter)
        if cache is not None:
            cache.advance(mem_len + n, real)
            cache.position_values = values
        out = self.final_norm(x)
        return (out, inter) if return_hiddens else out

    def _position_context(
        self,
        x: Tensor,
        given: tuple[Tensor | None, Tensor | None],
        context: Tensor | None,
        cache: KVCache | None,
        rows_in: tuple[list[Tensor] | None, Tensor | None, Tensor | None],
    ) -> tuple[PositionContext, Tensor | None, Tensor | None]:
        """The forward's positional tables, from the oldest position a layer holds on.

        ``given``: the forward's (pos, context_pos); ``rows_in``: (mems, their padding, the
        padding of ``x``). Padding renumbers the rows (``row_positions``), custom positions
        replace the numbers (``position_values``). Returns the tables, the custom position
        values of every slot for the cache (or None) and the real positions per row after this
        forward (or None when all were real).
        """
        mems, mem_mask, mask = rows_in
        b, n = x.shape[:2]
        mem_len = 0 if mems is None else mems[0].shape[1]
        past = cache.length if cache is not None else 0
        start = cache.first_position if cache is not None else 0
        held_real = None if cache is None else cache.real  # None: nothing padded so far
        held_mask = None if held_real is None else cache.key_mask
        new_mask = rows_mask(mem_mask, mask, mem_len, x)
        span = (start, past, past + mem_len + n)
        rows, real = row_positions(span, held_mask, held_real, new_mask, b, x.device)
        heads = self.config.heads
        values = position_values(
            self.positions, heads, given, x, context, cache, mems, (start, rows)
        )
        if values is not None:
            rows = table_values(values, start)
        k_len = past + mem_len + n - start
        tables = self.positions(n, k_len, x.device, x.dtype, start, rows, given[1])
        return tables, values, real

    def _working_cache(self, cache: Any, b: int, return_hiddens: bool) -> KVCache | None:
        """The cache this forward updates: a fork of the one given, or a new one.

        A :class:`LayerIntermediates` stands for its cache (x-transformers passes the
        intermediates back). Without a cache, ``return_hiddens=True`` on a causal stack that
        can cache starts one, so the intermediates can be continued.
        """
        if isinstance(cache, LayerIntermediates):
            cache = cache.cache
            if cache is None:
                raise ValueError(
                    f"{type(self).__name__}: the intermediates passed as 'cache' hold no cache "
                    "(this stack is not causal or cannot cache); pass a KVCache"
                )
        check_cache(cache, self.num_attention_layers, b, type(self).__name__)
        reason = self.uncacheable_reason
        if cache is not None and reason is not None:
            raise ValueError(f"{type(self).__name__}: this stack cannot use a 'cache': {reason}")
        if cache is not None and not return_hiddens:
            raise ValueError(stale_loop_message(type(self).__name__, "return_hiddens=True"))
        if cache is not None:
            return cache.fork()
        if return_hiddens and self.causal and reason is None:
            return self.new_cache()
        return None

    def _run_reversible(self, x, mask, attn_mask, positions):
        """The reversible two-stream stack (Reformer) on x (b, n, d)."""
        from x_attn.layers.reversible_stack import run_reversible

        # not a submodule, so .train()/.eval() never reach it: follow the stack's mode
        self.reversible.training = self.training
        out = self.final_norm(run_reversible(self.reversible, x, mask, attn_mask, positions))
        # each reversible branch runs its layer's default kernel (no return_attn here)
        kernels = [blk.kernel.name for blk in self._attention_blocks()]
        return out, LayerIntermediates(kernels=kernels)

    def _run_layers(self, x: Tensor, state: dict, inter: LayerIntermediates) -> Tensor:
        cfg = self.config
        prev = {"a": None, "c": None}
        attn_index = self_index = 0
        for kind, layer in zip(self.types, self.layers):
            residual = x
            h = layer["norm"](x) if cfg.pre_norm else x
            if kind == "f":
                out = layer["block"](h)
            else:
                entry = state["entries"][attn_index]
                if kind == "a":
                    inter.hiddens.append(x)
                    mem = self._layer_mem(state["mems"], self_index, layer)
                    out, ai = layer["block"](
                        h,
                        mask=state["mask"],
                        mem_mask=state["mem_mask"],
                        attn_mask=state["attn_mask"],
                        positions=state["positions"],
                        prev_logits=prev["a"],
                        mem=mem,
                        cache=entry,
                        return_attn=state["return_attn"],
                    )
                    self_index += 1
                else:
                    out, ai = layer["block"](
                        h,
                        state["context"],
                        context_mask=state["context_mask"],
                        positions=state["positions"],
                        prev_logits=prev["c"],
                        cache=entry,
                        return_attn=state["return_attn"],
                    )
                prev[kind] = ai.logits
                inter.kernels.append(ai.kernel)
                if ai.probs is not None and state["return_attn"]:
                    inter.attn_maps.append(ai.probs)
                attn_index += 1
            x = layer["residual"](out, residual)
            if not cfg.pre_norm:
                x = layer["norm"](x)
        return x

    def _layer_mem(self, mems: list[Tensor] | None, index: int, layer: nn.ModuleDict):
        if mems is None:
            return None
        mem = mems[index]
        return layer["norm"](mem) if self.config.pre_norm else mem

    def new_cache(self) -> KVCache:
        """An empty cache with the entry each attention layer creates for itself."""
        return KVCache(entries=[create() for create in self._entry_factories()])

    def _entry_factories(self) -> list:
        """The cache-entry factory of every attention layer, in layer order."""
        return [
            layer["block"].new_cache_entry if kind == "a" else layer["block"].new_context_entry
            for kind, layer in zip(self.types, self.layers)
            if kind in "ac"
        ]

    def _cache_entries(self, cache: KVCache | None) -> list[CacheEntry | None]:
        """Each attention layer's entry of ``cache`` (created on first use), or Nones."""
        if cache is None:
            return [None] * self.num_attention_layers
        if any(entry is None for entry in cache.entries):  # its length is checked already
            for i, create in enumerate(self._entry_factories()):
                cache.entry(i, create)
        return cache.entries

    def _check_mems(
        self, mems: list[Tensor] | None, b: int, dtype: torch.dtype, cache: KVCache | None
    ) -> int:
        """Memory length (0 without mems); mems join a cache only at its first call."""
        if mems is None:
            return 0
        if cache is not None and cache.length > 0:
            raise ValueError(
                f"{type(self).__name__}: 'mems' given with a 'cache' that already holds "
                f"{cache.length} positions; the cache took the mems in at its first call (they "
                "are the context before its first position): pass mems only with an empty cache"
            )
        return check_mems(mems, self.num_self_attention_layers, b, self.dim, dtype)

    def _check_inputs(self, x, context, mask, context_mask, attn_mask, k_len) -> Tensor | None:
        """Check the forward's inputs; returns attn_mask as (b|1, h|1, n, k_len) or None."""
        b, n = x.shape[:2]
        if self.cross_attend and context is None:
            raise ValueError(
                f"{type(self).__name__} cross-attends: pass context=(batch, context_len, dim)"
            )
        if not self.cross_attend and context is not None:
            raise ValueError(
                f"{type(self).__name__} does not cross-attend, but 'context' was "
                "given; build it with cross_attend=True"
            )
        if not self.cross_attend and context_mask is not None:
            raise ValueError("'context_mask' given to a stack that does not cross-attend")
        check_bool_mask("mask", mask, (b, n), "batch x sequence, True = real token")
        if context is not None:
            width = self.config.cross_attn.dim_context or self.dim
            if isinstance(context, Tensor) and context.ndim == 3 and context.shape[-1] != width:
                raise ValueError(
                    f"{type(self).__name__}: 'context' has width {context.shape[-1]}, but the "
                    f"cross-attention layers read width {width}; build the stack with "
                    f"cross_attn_dim_context={context.shape[-1]}"
                )
            check_float_input("context", context, width, type(self).__name__)
            if context.shape[0] != b:
                raise ValueError(f"'context' batch {context.shape[0]} != input batch {b}")
            check_bool_mask(
                "context_mask", context_mask, tuple(context.shape[:2]), "batch x context length"
            )
        return normalize_attn_mask(attn_mask, b, self.config.heads, n, k_len)


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
