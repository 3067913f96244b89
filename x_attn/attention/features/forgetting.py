"""Forgetting Transformer, FoX (Lin, Nikishin, He and Courville, "Forgetting Transformer:
Softmax Attention with a Forget Gate", arXiv 2503.02130); x-transformers'
``attn_data_dependent_alibi``.

Each head has a scalar forget gate per position, ``f_t = sigmoid(w . x_t + b)`` (x_t the
layer's input row), and the logit of query i and key j <= i gets the data-dependent decay

    D_ij = sum_{j < l <= i} log f_l = c_i - c_j,    c_t = sum_{l <= t} log f_l,

which is ALiBi's linear penalty with a learned, input-dependent slope per step. The sum runs
over the keys between j and i, so the bias is causal only: a layer without a causal mask is
refused (a key after its query would be *rewarded* by the same formula). ``b`` starts at 5
(f close to 1: little forgetting at initialisation), as in x-transformers.

The gates of a call's key rows (Transformer-XL memories included) come from the rows the
layer's cache entry receives (:class:`ForgetEntry` wraps whatever entry the layer has); the
entry keeps the cumulative sums ``c`` of the positions it holds, so decoding with a KV cache
continues them exactly. ``c`` is kept in float64 (float32 on MPS): it grows with the sequence,
and float32 would lose the small differences ``c_i - c_j`` of near keys far into it. A padded
row's gate is 1 (log f = 0), so padding anywhere changes no real row's bias. Keys without a
position (memory key/values, sinks) get no decay.

Shape legend: b batch, h heads, n rows of a call, p positions held, i queries, j keys,
d model dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureContext, FeatureSpec
from x_attn.attention.features.stages import BiasCall, BiasStage
from x_attn.cache.entry import CacheEntry, EntryWrapper, HeldKeys, KeyRows, Project
from x_attn.kernels.manual import ScoreHooks
from x_attn.masks.spec import Span

FLAG = "attn_data_dependent_alibi"


class ForgetEntry(EntryWrapper):
    """A layer's entry plus the cumulative log forget gates ``c`` of the positions it holds.

    Attributes:
        rows: the key rows of the current call (set by :meth:`update`, taken by the bias
            stage), or None.
        cum: (b, h, p) cumulative log gates of the positions ``start ... start + p - 1``.
        start: position of the first column of ``cum``.
    """

    def __init__(self, inner: CacheEntry, cum: Tensor | None = None, start: int = 0) -> None:
        super().__init__(inner)
        self.rows: KeyRows | None = None
        self.cum, self.start = cum, start

    def update(self, new: KeyRows, project: Project) -> HeldKeys:
        self.rows = new
        return self.inner.update(new, project)

    def rewrap(self, inner: CacheEntry, index: Tensor) -> CacheEntry:
        cum = None if self.cum is None else self.cum.index_select(0, index.to(self.cum.device))
        return ForgetEntry(inner, cum, self.start)

    def extend(self, log_gates: Tensor, span: Span) -> None:
        """Append the cumulative sums of the (b, h, n) log gates of the rows ``span``."""
        if self.cum is not None and span.start != self.start + self.cum.shape[-1]:
            raise ValueError(
                f"{FLAG}: this layer's cache holds forget gates up to position "
                f"{self.start + self.cum.shape[-1] - 1}, but the new rows start at {span.start}; "
                "pass the cache this model returned for this sequence"
            )
        if self.cum is None:
            self.cum, self.start = log_gates.cumsum(dim=-1), span.start
            return
        new = self.cum[..., -1:] + log_gates.cumsum(dim=-1)
        self.cum = torch.cat((self.cum, new), dim=-1)

    def keep(self, span: Span) -> Tensor:
        """The sums of the positions ``span`` (the keys held), dropping older ones."""
        if span.start < self.start:
            raise ValueError(
                f"{FLAG}: the keys start at position {span.start}, before the first position "
                f"whose forget gate this layer saw ({self.start}); keys placed without their "
                "rows (KVCache.adopt) have no gates"
            )
        self.cum, self.start = self.cum[..., span.start - self.start :], span.start
        return self.cum


class ForgetGateBias(BiasStage):
    """Bias stage of FoX: ``c_i - c_j`` over the held positional keys, 0 for free keys."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.to_gates = nn.Linear(dim, heads)
        nn.init.constant_(self.to_gates.bias, 5.0)

    def log_gates(self, rows: Tensor, mask: Tensor | None, dtype: torch.dtype) -> Tensor:
        """(b, n, d) rows -> (b, h, n) log forget gates in ``dtype``; padded rows 0."""
        log_f = F.logsigmoid(self.to_gates(rows)).transpose(1, 2).to(dtype)
        return log_f if mask is None else log_f * mask.unsqueeze(1).to(dtype)

    def forward(
        self, call: BiasCall, bias: Tensor | None, hooks: ScoreHooks
    ) -> tuple[Tensor, ScoreHooks]:
        mask = call.mask
        if not call.causal:
            raise ValueError(
                f"{FLAG}: the forget-gate decay sums the gates between a key and its query, "
                "which is defined for causal attention only; drop causal=False"
            )
        if mask.pinned:
            raise ValueError(
                f"{FLAG}: the keys a sliding-window cache pins (global tokens) lie outside "
                "its span of cumulative gates; drop attn_global_tokens"
            )
        state = _forget_entry(call.entry)
        rows, state.rows = state.rows, None  # the cache keeps the sums, not the rows
        wide = torch.float32 if call.q.device.type == "mps" else torch.float64
        state.extend(self.log_gates(rows.x, rows.mask, wide), rows.span)
        keys = state.keep(mask.k)
        queries = keys[..., keys.shape[-1] - len(mask.q) :]
        return call.add_bias(
            bias, (queries.unsqueeze(-1) - keys.unsqueeze(-2)).to(call.q.dtype)
        ), hooks


def _forget_entry(entry: CacheEntry | None) -> ForgetEntry:
    """The :class:`ForgetEntry` among ``entry`` and the entries it wraps."""
    while entry is not None and not isinstance(entry, ForgetEntry):
        entry = getattr(entry, "inner", None)
    if entry is None or entry.rows is None:
        raise ValueError(
            f"{FLAG}: this layer's cache entry keeps no forget gates; pass the cache this "
            "model returned (or none)"
        )
    return entry


def _build(ctx: FeatureContext) -> ForgetGateBias:
    if ctx.prefix != "attn_":
        raise ValueError(
            f"{ctx.flag('data_dependent_alibi')}: the forget gates decay over the positions "
            "between a key and its query, which a cross-attention context does not share; use "
            f"{FLAG} (self-attention of a Decoder)"
        )
    if not ctx.causal:
        raise ValueError(
            f"{FLAG}: the forget-gate decay is defined for causal attention only (a key after "
            "its query would be rewarded); use it in a Decoder (causal=True)"
        )
    return ForgetGateBias(ctx.dim, ctx.heads)


FORGETTING_SPEC = FeatureSpec(
    "data_dependent_alibi",
    "2503.02130",
    "bias",
    enabled=lambda ctx: ctx.config.data_dependent_alibi,
    build=_build,
    attr="forget_gates",
    wrap_entry=lambda ctx: ForgetEntry,
)
