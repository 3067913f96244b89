"""Relative position representations (Shaw, Uszkoreit and Vaswani, arXiv 1803.02155).

Each self-attention layer learns ``2k + 1`` key vectors ``w^K_r`` and value vectors ``w^V_r``
for the clipped offsets ``r = clip(j - i, -k, k)``, shared by all heads (paper section 3.3):

    e_ij = q_i . (k_j + w^K_{r(i, j)}) / sqrt(d)
    z_i  = sum_j alpha_ij (v_j + w^V_{r(i, j)})

The key term is computed as the paper's efficient form, ``(q_i . w^K_r)`` for the 2k + 1 offsets
then gathered per (i, j), and joins the logit bias, so a layer without the value term still
runs on SDPA. The value term needs the attention weights: it is an output hook of the manual
kernel (``sum_r (sum_{j: r(i, j) = r} alpha_ij) w^V_r``), so ``shaw_rel_values=True`` (the
paper's form, the default) needs the scores. Offsets are taken between position values
(custom ``pos`` included); keys without a position (memory key/values) get no relative term.

Shape legend: b batch, h heads, i queries, j held keys (with positions), r 2k + 1 offsets,
dq query/key head dim, dv value head dim.
"""

from __future__ import annotations

import torch
from einops import einsum, rearrange
from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureContext, FeatureSpec
from x_attn.attention.features.stages import BiasCall, BiasStage
from x_attn.kernels.manual import ScoreHooks, WrappedHooks


class RelativeValueHooks(WrappedHooks):
    """Another layer's hooks, plus Shaw's value term on the attention output."""

    def __init__(self, inner: ScoreHooks, offsets: Tensor, rel_v: Tensor) -> None:
        super().__init__(inner)
        self.offsets, self.rel_v = offsets, rel_v

    def on_output(self, out: Tensor, attn: Tensor) -> Tensor:
        """out + sum_r (weights of the keys at offset r) w^V_r; free keys come first."""
        out = self.inner.on_output(out, attn)
        weights = attn[..., attn.shape[-1] - self.offsets.shape[-1] :]
        per_offset = weights.new_zeros((*weights.shape[:-1], self.rel_v.shape[0]))
        per_offset = per_offset.scatter_add(-1, self.offsets, weights)
        return out + einsum(per_offset, self.rel_v.to(out.dtype), "b h i r, r d -> b h i d")


class ShawRelativePositions(BiasStage):
    """The learned relative keys (and values) of one layer.

    Args:
        max_distance: the clipping distance k (offsets beyond +-k share the edge vectors).
        qk_dim: query/key head dim.
        v_dim: value head dim.
        values: learn the value term too (the paper's form).
        scale: the layer's logit scale (1 / sqrt(d)).
    """

    def __init__(self, max_distance: int, qk_dim: int, v_dim: int, values: bool, scale: float):
        super().__init__()
        self.max_distance, self.scale = max_distance, scale
        count = 2 * max_distance + 1
        self.rel_k = nn.Parameter(torch.randn(count, qk_dim) * qk_dim**-0.5)
        self.rel_v = nn.Parameter(torch.randn(count, v_dim) * v_dim**-0.5) if values else None

    def offsets(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """(b|1, 1, i, j) table index ``clip(k_pos - q_pos, -k, k) + k`` of (b|1, n) positions."""
        rel = rearrange(k_pos, "b j -> b 1 1 j") - rearrange(q_pos, "b i -> b 1 i 1")
        k = self.max_distance
        return rel.round().long().clamp(-k, k) + k

    def forward(
        self, call: BiasCall, bias: Tensor | None, hooks: ScoreHooks
    ) -> tuple[Tensor, ScoreHooks]:
        """Bias stage: add ``q_i . w^K_r(i, j) / sqrt(d)``; hook the value term on the output.

        The keys are ``call.mask.free`` keys without a position (no term), then the positional
        keys ``call.mask.k``.
        """
        q = call.q
        b, h, i = q.shape[:3]
        offsets = self.offsets(*call.position_rows("shaw_rel_pos")).expand(b, h, i, -1)
        per_offset = einsum(q, self.rel_k.to(q.dtype), "b h i d, r d -> b h i r") * self.scale
        bias = call.add_bias(bias, per_offset.gather(-1, offsets))
        if self.rel_v is not None:
            hooks = RelativeValueHooks(hooks, offsets, self.rel_v)
        return bias, hooks

    def extra_repr(self) -> str:
        return f"max_distance={self.max_distance}, values={self.rel_v is not None}"


def _enabled(ctx: FeatureContext) -> bool:
    return ctx.stack is not None and ctx.stack.shaw_rel_pos


def _build(ctx: FeatureContext) -> ShawRelativePositions:
    proj = ctx.projection
    options = ctx.stack
    return ShawRelativePositions(
        options.shaw_max_distance, proj.qk_dim, proj.v_dim, options.shaw_rel_values, ctx.scale
    )


SHAW_SPEC = FeatureSpec(
    "shaw_rel_pos",
    "1803.02155",
    "bias",
    enabled=_enabled,
    build=_build,
    needs_scores=lambda ctx: ctx.stack.shaw_rel_values,
    attr="shaw",
    flag_of=lambda ctx: (
        "shaw_rel_pos (with shaw_rel_values=True)" if ctx.stack.shaw_rel_values else "shaw_rel_pos"
    ),
)
