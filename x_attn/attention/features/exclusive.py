"""Exclusive self-attention (XSA; Zhai, arXiv 2603.09078): the attention output of a token with
its own value's direction removed.

Self-attention outputs lean towards each token's own value. XSA keeps only what is orthogonal to
it: ``z_i = y_i - (y_i . v_i) v_i / |v_i|^2`` (a zero value leaves ``y_i`` as it is).
x-transformers' flags (its "belief attention", openreview Ard2QzPAUK) choose the vectors:
``attn_orthog_projected_values`` projects each token's output over all heads concatenated (the
value of a shared key/value head repeated for each query head it serves),
``attn_orthog_projected_values_per_head`` each head's output against its head's value; with both,
the two results are concatenated and the output projection is twice as wide. The projection
replaces the output stage (slot "output"), before the output matrix.

x-transformers projects each sample's whole sequence as one vector, so a row's result depends on
later rows; x_attn projects token by token, as the paper, so the layer stays causal and caches.

Shape legend: b batch, h query heads, hk key/value heads, n queries, d value head dim,
dm model dim.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import Tensor

from x_attn.attention.features.attn_on_attn import LinearOutput
from x_attn.attention.features.spec import FeatureContext, FeatureSpec


def without_own_direction(y: Tensor, v: Tensor) -> Tensor:
    """``y - (y . v) v / |v|^2`` over the last dim, in float32 at least."""
    dtype = y.dtype
    y, v = (t.to(torch.promote_types(dtype, torch.float32)) for t in (y, v))
    unit = torch.nn.functional.normalize(v, dim=-1)
    return (y - (y * unit).sum(-1, keepdim=True) * unit).to(dtype)


class ExclusiveOutput(LinearOutput):
    """Output stage: the per-token projection(s), then the output matrix."""

    reads_own_values = True  # Attention._output cuts the queries' own values for it

    def __init__(self, heads: int, v_dim: int, dim_out: int, whole: bool, per_head: bool) -> None:
        super().__init__(heads * v_dim * (int(whole) + int(per_head)), dim_out)
        self.heads, self.whole, self.per_head = heads, whole, per_head

    def forward(
        self, attended: Tensor, query_input: Tensor | None = None, own: Tensor | None = None
    ) -> Tensor:
        """attended (b n (h d)), own: the queries' own values (b hk n d) -> (b n dm)."""
        if own is None:
            raise ValueError("ExclusiveOutput needs the queries' own values (self-attention)")
        own = repeat(own, "b hk n d -> b n (hk g) d", g=self.heads // own.shape[1])
        parts = []
        if self.whole:
            parts.append(without_own_direction(attended, rearrange(own, "b n h d -> b n (h d)")))
        if self.per_head:
            y = rearrange(attended, "b n (h d) -> b n h d", h=self.heads)
            parts.append(rearrange(without_own_direction(y, own), "b n h d -> b n (h d)"))
        return super().forward(torch.cat(parts, dim=-1))


def _build(ctx: FeatureContext) -> ExclusiveOutput:
    flags = [ctx.flag(n) for n in ("orthog_projected_values", "orthog_projected_values_per_head")]
    flags = [f for f, on in zip(flags, _switches(ctx), strict=True) if on]
    if ctx.prefix != "attn_":
        raise ValueError(
            f"{' and '.join(flags)}: a cross-attention query has no value of its own to remove; "
            "use it on self-attention (attn_)"
        )
    proj = ctx.projection
    if not proj.transformable:
        raise ValueError(
            f"{' and '.join(flags)} removes each token's own value from its output; this layer "
            "attends through a shared latent and forms no per-head values; drop one of them"
        )
    whole, per_head = _switches(ctx)
    return ExclusiveOutput(proj.heads, proj.v_dim, ctx.dim_out, whole, per_head)


def _switches(ctx: FeatureContext) -> tuple[bool, bool]:
    return ctx.config.orthog_projected_values, ctx.config.orthog_projected_values_per_head


EXCLUSIVE_SPEC = FeatureSpec(
    "orthog_projected_values",
    "2603.09078",
    "output",
    enabled=lambda ctx: any(_switches(ctx)),
    build=_build,
    slot="output",
)
