"""Multi-Token Attention (Golovneva et al., arXiv 2504.00927).

Each attention weight may depend on several neighbouring queries and keys, and on other heads:

* key-query convolution: per head, a 2-D convolution over the score map whose window ends at
  the query (rows i - c_q + 1 ... i: the query axis reaches only into the past) and is centred
  on the key (columns j - (c_k - 1)/2 ... j + (c_k - 1)/2). Masked cells enter as 0 (the
  paper's Mask_0) and are masked again afterwards (Mask_-inf before a softmax, 0 after it),
  so no hidden key and no future position leaks. On the logits before the softmax
  (``attn_mta_pre_conv``, on by default) and/or on the weights after it
  (``attn_mta_post_conv``); both use ``attn_mta_kernel_q`` x ``attn_mta_kernel_k``.
* head mixing: the heads in groups of c_h (``attn_mta_head_kernel``, default all heads), a
  learned c_h x c_h mix of their maps in each group, before (``attn_mta_pre_head_mix``, after
  the convolution) and/or after (``attn_mta_post_head_mix``) the softmax.
* group norm (``attn_mta_group_norm``): each head's output RMS-normalised over its dims (one
  learned gain shared by the heads, eps 1e-5), times 1 - lambda(l) with
  lambda(l) = 0.8 - 0.6 exp(-0.3 l) for self-attention layer l from 0 (``attn_mta_depth_scale``,
  the DIFF Transformer schedule, arXiv 2410.05258), then optionally gated per head by
  sigmoid(w . out + b) (``attn_mta_gate``).

Kernels and mixes start as the identity, so a fresh layer computes plain attention. Kernel
layout (F.conv2d's cross-correlation): ``kernel[h, 0, a, c]`` weighs the score of query row
i - (c_q - 1 - a) and key column j + c - (c_k - 1) / 2; a = c_q - 1, c = (c_k - 1) / 2 is the
cell itself. Head mix layout: ``weight[g, o, c]`` takes head c of group g into head o.

Beyond the paper: the rows of padded query positions enter the convolution as 0 (a padding
token must not reach real ones along the query axis); keys without a position (memory
key/values) are convolved as a block of their own; decoding keeps the newest c_q - 1 input rows
of each convolution in the layer's cache entry (:class:`x_attn.cache.query_tail.QueryTailEntry`).
Transformer-XL memories are refused: their query rows are not computed.

Shape legend: b batch, h heads, g head groups, c / o heads in a group, i queries, j keys
(f free + p positional), n sequence, d head dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor, nn

from x_attn.attention.features import ScoreCall, ScoreFeature
from x_attn.attention.features.spec import FeatureContext, FeatureSpec
from x_attn.cache.entry import CacheEntry
from x_attn.cache.query_tail import QueryTailEntry, find_tail
from x_attn.layers.norms import RMSNorm
from x_attn.masks.spec import AttnMask


class KeyQueryConv(nn.Module):
    """One c_q x c_k kernel per head, initialised to the identity (1 on the cell itself)."""

    def __init__(self, heads: int, c_q: int, c_k: int) -> None:
        super().__init__()
        weight = torch.zeros(heads, 1, c_q, c_k)
        weight[:, 0, -1, c_k // 2] = 1.0
        self.kernel = nn.Parameter(weight)

    def forward(self, canvas: Tensor, rows: int) -> Tensor:
        """(b, h, rows + i, j) -> (b, h, i, j): rows before the queries are read, not returned."""
        c_q, c_k = self.kernel.shape[-2:]
        padded = F.pad(canvas, (c_k // 2, c_k // 2, c_q - 1 - rows, 0))
        return F.conv2d(padded, self.kernel.to(canvas.dtype), groups=canvas.shape[1])


class HeadMix(nn.Module):
    """A learned mix of the maps within each group of ``group`` heads (identity at first)."""

    def __init__(self, heads: int, group: int) -> None:
        super().__init__()
        self.group = group
        self.weight = nn.Parameter(torch.eye(group).repeat(heads // group, 1, 1))

    def forward(self, maps: Tensor) -> Tensor:
        maps = rearrange(maps, "b (g c) i j -> b g c i j", c=self.group)
        mixed = einsum(self.weight.to(maps.dtype), maps, "g o c, b g c i j -> b g o i j")
        return rearrange(mixed, "b g o i j -> b (g o) i j")


class MultiTokenScores(ScoreFeature):
    """The convolutions and head mixes of one layer; :meth:`for_call` binds them to a call."""

    def __init__(self, ctx: FeatureContext) -> None:
        super().__init__()
        cfg, heads = ctx.config, ctx.heads
        self.flag, self.name = _flag(ctx), ctx.flag("mta")  # all its score flags; the main one
        group = cfg.mta_head_kernel or heads
        if heads % group:
            raise ValueError(
                f"Attention: {ctx.flag('mta_head_kernel')}={group} must divide heads={heads} "
                "(the heads are mixed in groups of that size)"
            )
        sizes = (heads, cfg.mta_kernel_q, cfg.mta_kernel_k)
        self.pre_conv = KeyQueryConv(*sizes) if cfg.mta_pre_conv else None
        self.post_conv = KeyQueryConv(*sizes) if cfg.mta_post_conv else None
        self.pre_mix = HeadMix(heads, group) if cfg.mta_pre_head_mix else None
        self.post_mix = HeadMix(heads, group) if cfg.mta_post_head_mix else None
        self.rows = cfg.mta_kernel_q - 1  # query rows each query reads before itself
        self.reach = cfg.mta_kernel_k // 2  # keys on each side

    def for_call(self, call: ScoreCall) -> _BoundMTA:
        return _BoundMTA(self, call)


class _BoundMTA:
    """One call's view of a layer's MTA: its mask description and its cache entry."""

    def __init__(self, mta: MultiTokenScores, call: ScoreCall) -> None:
        self.mta, self.spec = mta, call.mask
        self.entry = _checked_entry(mta.name, call.entry, call.mask)
        self.query_pad = _query_padding(call.mask)
        self.mask: Tensor | None = None  # the dense mask, from on_masked (it runs first)

    def on_logits(self, sim: Tensor, prev_logits: Tensor | None) -> Tensor:
        return sim

    def on_masked(self, sim: Tensor, mask: Tensor | None) -> Tensor:
        mta, self.mask = self.mta, mask
        if mta.pre_conv is not None:
            sim = self._convolve("pre", mta.pre_conv, sim, mask)
        if mta.pre_mix is not None:
            sim = mta.pre_mix(_zero_masked(sim, mask))
        return sim if mask is None else sim.masked_fill(~mask, -torch.finfo(sim.dtype).max)

    def on_probs(self, attn: Tensor) -> Tensor:
        mta, mask = self.mta, self.mask
        if mta.post_conv is not None:
            attn = _zero_masked(self._convolve("post", mta.post_conv, attn, mask), mask)
        if mta.post_mix is not None:
            attn = _zero_masked(mta.post_mix(attn), mask)
        return attn

    def _convolve(self, stage: str, conv: KeyQueryConv, x: Tensor, mask: Tensor | None) -> Tensor:
        """Mask_0, the kept rows of earlier queries on top, the convolution (b, h, i, f + p)."""
        x = _zero_masked(x, mask)
        if self.query_pad is not None:
            x = x.masked_fill(~self.query_pad, 0.0)
        spec, free = self.spec, self.spec.free
        canvas = self.entry.stack(
            stage, x[..., :free], x[..., free:], spec.q, spec.k, self.mta.rows, self.mta.reach
        )
        keys = conv(canvas.keys, canvas.rows)[..., canvas.offset :]
        if not free:
            return keys
        return torch.cat((conv(canvas.free, canvas.rows), keys), dim=-1)


def _zero_masked(x: Tensor, mask: Tensor | None) -> Tensor:
    return x if mask is None else x.masked_fill(~mask, 0.0)


def _query_padding(spec: AttnMask) -> Tensor | None:
    """(b, 1, i, 1) True = real query (self-attention: the queries are the newest keys)."""
    if spec.key_padding is None:
        return None
    first = spec.q.start - spec.k.start
    return rearrange(spec.key_padding[:, first : first + len(spec.q)], "b i -> b 1 i 1")


def _checked_entry(flag: str, entry: CacheEntry | None, spec: AttnMask) -> QueryTailEntry:
    """The call's query-tail entry; a clear error for a call MTA cannot serve exactly."""
    tail = find_tail(entry)
    if tail is None and entry is not None and not entry.positional:
        raise ValueError(
            f"{flag}: Multi-Token Attention convolves self-attention maps; this layer was "
            "called with a context (cross-attention), which it does not support"
        )
    if tail is None:
        raise ValueError(
            f"{flag}: this layer's cache entry ({type(entry).__name__}) keeps no query rows, "
            "which the query convolution needs when decoding; pass the cache the model returns "
            "(return_cache=True) or one from attn_layers.new_cache()"
        )
    if tail.new_start is not None and tail.new_start < spec.q.start:
        raise ValueError(
            f"{flag}: Transformer-XL memories (mems) give keys without their query rows, which "
            "the query convolution reads; drop mems / max_mem_len for a model with attn_mta"
        )
    return tail


def _flag(ctx: FeatureContext) -> str:
    """attn_mta, and the sub-flags that also need the scores."""
    cfg = ctx.config
    extra = [n for n in ("post_conv", "pre_head_mix", "post_head_mix") if getattr(cfg, f"mta_{n}")]
    return ", ".join([ctx.flag("mta")] + [ctx.flag(f"mta_{n}") for n in extra])


class HeadNorm(nn.Module):
    """Per-head output: RMS norm times the depth scale, then the optional scalar gate."""

    def __init__(self, dim_head: int, norm: bool, scale: float, gate: bool) -> None:
        super().__init__()
        self.norm = RMSNorm(dim_head, eps=1e-5) if norm else None
        self.scale = scale
        self.gate = nn.Linear(dim_head, 1) if gate else None

    def forward(self, out: Tensor, x: Tensor | None = None) -> Tensor:
        """(b, h, n, d) -> (b, h, n, d); the query input ``x`` of the "heads" stage is unused."""
        if self.norm is not None:
            out = self.norm(out) * self.scale
        if self.gate is not None:
            out = out * torch.sigmoid(self.gate(out))
        return out


def depth_scale(layer: int) -> float:
    """1 - lambda_init(l), lambda_init(l) = 0.8 - 0.6 exp(-0.3 l), l from 0 (arXiv 2410.05258)."""
    return 1.0 - (0.8 - 0.6 * math.exp(-0.3 * layer))


def _enabled(ctx: FeatureContext) -> bool:
    """Self-attention layers with attn_mta, the chosen ones when attn_mta_layers is given."""
    cfg = ctx.config
    chosen = cfg.mta_layers is None or ctx.layer in cfg.mta_layers
    return cfg.mta and ctx.prefix == "attn_" and chosen


def _head_norm(ctx: FeatureContext) -> HeadNorm:
    cfg = ctx.config
    scale = depth_scale(ctx.layer) if cfg.mta_depth_scale else 1.0
    return HeadNorm(ctx.projection.v_dim, cfg.mta_group_norm, scale, cfg.mta_gate)


MTA_SPEC = FeatureSpec(
    "mta",
    "2504.00927",
    "masked",
    enabled=_enabled,
    build=MultiTokenScores,
    needs_scores=True,
    flag_of=_flag,
    wrap_entry=lambda ctx: QueryTailEntry,
    reads_neighbours=True,
)

MTA_HEAD_NORM_SPEC = FeatureSpec(
    "mta_head_norm",
    "2504.00927",
    "heads",
    enabled=lambda ctx: _enabled(ctx) and (ctx.config.mta_group_norm or ctx.config.mta_gate),
    build=_head_norm,
    attr="mta_head_norm",
    flag_of=lambda ctx: ctx.flag("mta_group_norm" if ctx.config.mta_group_norm else "mta_gate"),
)
