"""Gated attention output: "Gated Attention for Large Language Models" (Qiu et al., arXiv
2505.06708), as x-transformers' ``gate_values`` / ``output_gate`` (gates of AlphaFold2's
attention and, with low rank and both gates, its "hybrid gated attention").

The attention output ``o`` (heads merged, before the output projection) is multiplied by
``act(g)`` with gate logits ``g = G_x(x) + G_o(o)``: ``attn_gate_values`` adds the input gate
``G_x`` (from the query input x), ``attn_output_gate`` the output gate ``G_o`` (from o itself).
Each is a linear map without bias initialised at 0, or, with ``*_rank=r``, a low-rank map
``up(silu(down(.)))`` (``attn_low_rank_silu_gates=False`` drops the SiLU) whose ``up`` starts at
0; ``*_headwise`` makes one gate per head instead of one per dimension. ``act`` is the sigmoid,
or SiLU with ``attn_swiglu_values`` (a SwiGLU-style gate). The fused kernel still runs the
layer.

Shape legend: b batch, h heads, i queries, d head dim, dm model dim, e = h * d.
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureContext, FeatureSpec
from x_attn.attention.features.stages import OutputGate


class GateProjection(nn.Module):
    """dim_in -> dim_out, linear (no bias) or low rank with an optional SiLU; output map at 0."""

    def __init__(self, dim_in: int, dim_out: int, rank: int | None, silu: bool, flag: str):
        super().__init__()
        if rank is not None and not (rank < dim_in or rank < dim_out):
            raise ValueError(
                f"{flag}={rank} must be below the gate's input dim {dim_in} or output dim "
                f"{dim_out} (a low-rank map)"
            )
        self.down = None if rank is None else nn.Linear(dim_in, rank, bias=False)
        self.up = nn.Linear(dim_in if rank is None else rank, dim_out, bias=False)
        nn.init.zeros_(self.up.weight)
        self.silu = silu and rank is not None

    def forward(self, t: Tensor) -> Tensor:
        if self.down is not None:
            t = self.down(t)
            t = F.silu(t) if self.silu else t
        return self.up(t)


class GatedValues(OutputGate):
    """out (b h i d) * act(G_x(x) + G_o(out)), per dimension or per head."""

    def __init__(self, ctx: FeatureContext) -> None:
        super().__init__()
        config, heads, v_dim = ctx.config, ctx.heads, ctx.projection.v_dim
        inner, silu = heads * v_dim, config.low_rank_silu_gates
        self.heads = heads
        self.swiglu = config.swiglu_values
        self.input_gate = self.output_gate = None
        self.input_headwise = config.gate_values_headwise
        self.output_headwise = config.output_gate_headwise
        if config.gate_values:
            size = heads if self.input_headwise else inner
            rank = ctx.flag("gate_values_rank")
            self.input_gate = GateProjection(ctx.dim, size, config.gate_values_rank, silu, rank)
        if config.output_gate:
            size = heads if self.output_headwise else inner
            rank = ctx.flag("output_gate_rank")
            self.output_gate = GateProjection(inner, size, config.output_gate_rank, silu, rank)

    def _heads(self, g: Tensor, headwise: bool) -> Tensor:
        if headwise:
            return rearrange(g, "b i h -> b h i 1")
        return rearrange(g, "b i (h d) -> b h i d", h=self.heads)

    def forward(self, out: Tensor, x: Tensor) -> Tensor:
        logits = 0.0
        if self.input_gate is not None:
            logits = self._heads(self.input_gate(x), self.input_headwise)
        if self.output_gate is not None:
            merged = rearrange(out, "b h i d -> b i (h d)")
            logits = logits + self._heads(self.output_gate(merged), self.output_headwise)
        gate = F.silu(logits) if self.swiglu else logits.sigmoid()
        return out * gate.to(out.dtype)


GATED_VALUES_SPEC = FeatureSpec(
    "gate_values",
    "2505.06708",
    "heads",
    enabled=lambda ctx: ctx.config.gate_values or ctx.config.output_gate,
    build=GatedValues,
    flag_of=lambda ctx: ctx.flag("gate_values" if ctx.config.gate_values else "output_gate"),
)
