"""Relative position bias from a learned distance basis, projected per query (x-transformers'
``RelativeProjPositionalBias`` / ``attn_use_rel_proj_pos_bias``; attributed there to Thinking
Machines' Inkling model, with no paper yet).

A bank of ``m`` learned curves over the distances ``0 .. max_dist - 1`` (``B``, m x max_dist,
initialised N(0, 0.02^2)); each query mixes them with weights computed from its own input,
``w_i = W x_i + c`` (per head, m numbers), and the logit bias of key j is that query's curve at
the distance ``i - j``:

    bias[h, i, j] = sum_r w[h, i, r] B[r, i - j]    for 0 <= i - j < max_dist, else 0

so keys in the future or farther than ``max_dist`` get no bias (a causal stack masks the future
anyway). Distances are taken between position values (custom ``pos`` included, a KV cache keeps
them); keys without a position (memory key/values) get no bias. Self-attention only: a
cross-attention context has no distance to the queries.

Shape legend: b batch, h heads, i queries, j keys, m distance basis curves, R max distance,
d model dim.
"""

from __future__ import annotations

import torch
from einops import einsum, rearrange
from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureContext, FeatureSpec
from x_attn.attention.features.stages import BiasCall, BiasStage
from x_attn.kernels.manual import ScoreHooks
from x_attn.utils import check_positive_int


class RelativeProjPositionalBias(nn.Module):
    """Query-dependent relative bias: ``forward(x, seq_len_k)`` -> (b, h, i, j) for queries at
    the last i of j consecutive positions (x-transformers' call), or :meth:`bias` for any
    distances."""

    def __init__(self, dim: int, heads: int, num_distance_basis: int = 16, max_dist: int = 1024):
        super().__init__()
        for name, value in (("dim", dim), ("heads", heads)):
            check_positive_int(name, value, "RelativeProjPositionalBias")
        check_positive_int("num_distance_basis", num_distance_basis, "RelativeProjPositionalBias")
        check_positive_int("max_dist", max_dist, "RelativeProjPositionalBias")
        self.heads, self.max_dist = heads, max_dist
        self.to_distance_weights = nn.Linear(dim, heads * num_distance_basis)
        self.distance_bank = nn.Parameter(torch.randn(num_distance_basis, max_dist) * 0.02)

    def bias(self, x: Tensor, distance: Tensor) -> Tensor:
        """x (b, i, d), distance (b|1, i, j) integer query - key -> bias (b, h, i, j)."""
        weights = rearrange(self.to_distance_weights(x), "b i (h m) -> b h i m", h=self.heads)
        curves = einsum(weights, self.distance_bank.to(weights.dtype), "b h i m, m r -> b h i r")
        valid = (distance >= 0) & (distance < self.max_dist)
        index = distance.clamp(0, self.max_dist - 1).unsqueeze(1)  # (b|1, 1, i, j)
        index = index.expand(curves.shape[0], curves.shape[1], -1, -1)
        return curves.gather(-1, index).masked_fill(~valid.unsqueeze(1), 0.0)

    def forward(self, x: Tensor, seq_len_k: int | None = None) -> Tensor:
        n = x.shape[1]
        j = n if seq_len_k is None else seq_len_k
        if j < n:
            raise ValueError(f"RelativeProjPositionalBias: seq_len_k={j} < the {n} queries")
        q_pos = torch.arange(j - n, j, device=x.device)
        distance = q_pos[:, None] - torch.arange(j, device=x.device)[None, :]
        return self.bias(x, distance.unsqueeze(0))


class RelProjBiasStage(BiasStage):
    """Bias stage of a self-attention layer: the bias over the held positional keys."""

    def __init__(self, dim: int, heads: int, num_distance_basis: int, max_dist: int) -> None:
        super().__init__()
        self.rel = RelativeProjPositionalBias(dim, heads, num_distance_basis, max_dist)

    def forward(
        self, call: BiasCall, bias: Tensor | None, hooks: ScoreHooks
    ) -> tuple[Tensor, ScoreHooks]:
        q_pos, k_pos = call.position_rows("attn_use_rel_proj_pos_bias")
        distance = q_pos[:, :, None] - k_pos[:, None, :]
        return call.add_bias(bias, self.rel.bias(call.query_input, distance.long())), hooks


def _build(ctx: FeatureContext) -> RelProjBiasStage:
    if ctx.prefix != "attn_":
        raise ValueError(
            f"{ctx.flag('use_rel_proj_pos_bias')}: a cross-attention context has no distance to "
            "the queries; use it on self-attention (attn_)"
        )
    cfg = ctx.config
    return RelProjBiasStage(
        ctx.dim, ctx.heads, cfg.rel_proj_num_distance_basis, cfg.rel_proj_max_dist
    )


REL_PROJ_BIAS_SPEC = FeatureSpec(
    "use_rel_proj_pos_bias",
    "",
    "bias",
    enabled=lambda ctx: ctx.config.use_rel_proj_pos_bias,
    build=_build,
    attr="rel_proj_pos_bias",
)
