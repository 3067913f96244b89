"""Contextual Position Encoding, CoPE (Golovneva, Wang, Weston and Sukhbaatar, "Contextual
Position Encoding: Learning to Count What's Important", arXiv 2405.18134); x-transformers'
``attn_use_cope`` with ``attn_cope_max_pos``.

Positions are counted by the content: each key j seen by query i opens a gate
``g_ij = sigmoid(l_ij)`` on the layer's logit ``l_ij = q_i . k_j * scale`` (masked keys: 0),
and the contextual position of key j is the sum of the gates from j to the query,

    p_ij = sum_{j <= t <= i} g_it        (a reverse cumulative sum over the keys),

clamped to ``max_pos - 1``. Integer positions p have learned embeddings ``e[p]`` (per layer,
shared by the heads, initialised to 0 as in the paper); a fractional position interpolates
the logits of its two neighbours, ``z_ij = (1 - w) q_i . e[floor p_ij] + w q_i . e[ceil p_ij]``
with ``w = p_ij - floor p_ij``, and the logit becomes ``l_ij + z_ij`` (q unscaled, as in the
paper). The gates need the scores: the layer runs on the manual kernel (a hook after masking).
The positions count keys up to the query, which defines them for causal attention only: a layer
without a causal mask is refused. Keys without a position (memory key/values) come first and
count like the oldest keys. Each row's positions depend only on its query and the keys it
sees, so decoding with a KV cache equals the full forward.

Shape legend: b batch, h heads, i queries, j keys, P max positions, dq query/key head dim.
"""

from __future__ import annotations

import torch
from einops import einsum
from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureContext, FeatureSpec
from x_attn.attention.features.stages import BiasCall, BiasStage
from x_attn.kernels.manual import ScoreHooks, WrappedHooks

FLAG = "attn_use_cope"


def contextual_logits(q: Tensor, sim: Tensor, pos_emb: Tensor) -> Tensor:
    """The CoPE term (b, h, i, j) of queries q (b, h, i, dq) and masked logits sim (masked
    entries a large negative number, so their gate is 0) with embeddings (P, dq)."""
    gates = sim.sigmoid()
    positions = gates.flip(-1).cumsum(dim=-1).flip(-1).clamp(max=pos_emb.shape[0] - 1)
    per_position = einsum(q.to(sim.dtype), pos_emb.to(sim.dtype), "b h i d, p d -> b h i p")
    lower = positions.floor()
    w = positions - lower
    below = per_position.gather(-1, lower.long())
    above = per_position.gather(-1, positions.ceil().long())
    return below * (1 - w) + above * w


class ContextualHooks(WrappedHooks):
    """Another layer's hooks, plus the CoPE term after masking."""

    def __init__(self, inner: ScoreHooks, q: Tensor, pos_emb: Tensor) -> None:
        super().__init__(inner)
        self.q, self.pos_emb = q, pos_emb

    def on_masked(self, sim: Tensor, mask: Tensor | None) -> Tensor:
        sim = self.inner.on_masked(sim, mask)
        sim = sim + contextual_logits(self.q, sim, self.pos_emb)
        return sim if mask is None else sim.masked_fill(~mask, -torch.finfo(sim.dtype).max)


class ContextualPositions(BiasStage):
    """Bias stage of CoPE: adds no bias; hooks the contextual term on the masked logits."""

    def __init__(self, max_pos: int, dim_head: int) -> None:
        super().__init__()
        self.pos_emb = nn.Parameter(torch.zeros(max_pos, dim_head))

    def forward(
        self, call: BiasCall, bias: Tensor | None, hooks: ScoreHooks
    ) -> tuple[Tensor | None, ScoreHooks]:
        if not call.causal:
            raise ValueError(
                f"{FLAG}: contextual positions count the gates from a key up to its query, "
                "which is defined for causal attention only; drop causal=False"
            )
        return bias, ContextualHooks(hooks, call.q, self.pos_emb)


def _build(ctx: FeatureContext) -> ContextualPositions:
    if ctx.prefix != "attn_" or not ctx.causal:
        raise ValueError(
            f"{ctx.flag('use_cope')}: contextual positions count the gates from a key up to "
            f"its query, which is defined for causal self-attention only; use {FLAG} in a "
            "Decoder"
        )
    widened = [ctx.flag("l2_distance")] if ctx.config.l2_distance else []
    widened += ["polar_pos_emb"] if ctx.stack is not None and ctx.stack.polar_pos_emb else []
    if widened:
        raise ValueError(
            f"Attention: {FLAG} learns position embeddings as wide as the query head, which "
            f"{widened[0]} widens; drop one of them"
        )
    return ContextualPositions(ctx.config.cope_max_pos, ctx.projection.qk_dim)


COPE_SPEC = FeatureSpec(
    "use_cope",
    "2405.18134",
    "bias",
    enabled=lambda ctx: ctx.config.use_cope,
    build=_build,
    needs_scores=True,
    attr="cope",
)
