"""Polar Coordinate Position Embeddings, PoPE (Gopalakrishnan, Csordas, Schmidhuber and Mozer,
"Decoupling the 'What' and 'Where' With Polar Coordinate Positional Embeddings",
arXiv 2509.10534); x-transformers' ``polar_pos_emb``.

RoPE rotates pairs of query/key dims, so a pair's content angle mixes with its position angle.
PoPE keeps content in magnitudes only: each of the d query/key dims c becomes a complex number
with magnitude ``softplus(q_c)`` and phase ``p * theta_c`` (d frequencies
``theta_c = 10000 ** (-c / d)``), keys with a learned phase offset ``delta_c`` per key head,
clamped to [-2 pi, 0]. The logit of query i and key j is the real part of their product,

    logit_ij = scale * sum_c softplus(q_ic) softplus(k_jc) cos((p_i - p_j) theta_c - delta_c)

which depends on positions through ``p_i - p_j`` only (relative). Written in reals, a query
becomes ``[softplus(q), 0]`` and a key ``[softplus(k) cos delta, softplus(k) sin delta]``
(2d dims, "qk" stage, before positions); the stack's rotary table of dim 2d (half-split
pairs c and c + d, frequencies ``10000 ** (-2c / 2d)``) then rotates both by their positions.
So every kernel, the KV cache and custom positions work as for RoPE; the kernel's query/key
dim is 2d, the logit scale stays ``dim_head ** -0.5``. Keys without a position (memory
key/values) get the magnitudes without a phase. The phase offsets are learned per layer (the
paper's form; x-transformers shares one table across the stack, see
:mod:`x_attn.interop`).

Shape legend: b batch, h heads, hk key heads, n rows, d query/key head dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureContext, FeatureSpec
from x_attn.attention.features.stages import HeadTransform


class PolarMagnitudes(HeadTransform):
    """The "qk" transform of PoPE: magnitudes (and key phase offsets) in 2d real dims.

    Args:
        k_heads: key heads (one set of phase offsets each).
        dim_head: query/key head dim d (d frequencies).
    """

    def __init__(self, k_heads: int, dim_head: int) -> None:
        super().__init__()
        self.phase_offset = nn.Parameter(torch.zeros(k_heads, dim_head))

    def q(self, t: Tensor) -> Tensor:
        """(b, h, n, d) -> (b, h, n, 2d): [softplus(q), 0]."""
        return _with_phase(F.softplus(t))

    def k(self, t: Tensor) -> Tensor:
        """(b, hk, n, d) -> (b, hk, n, 2d): [softplus(k) cos delta, softplus(k) sin delta]."""
        # cos / sin of the offsets in at least float32 (half weights), then cast
        wide = torch.promote_types(t.dtype, torch.float32)
        delta = self.phase_offset.to(wide).clamp(-2 * math.pi, 0.0).unsqueeze(-2)
        return _with_phase(F.softplus(t), delta.cos().to(t.dtype), delta.sin().to(t.dtype))

    def free_k(self, t: Tensor) -> Tensor:
        """Keys without a position: magnitudes with phase 0."""
        return _with_phase(F.softplus(t))


def _with_phase(magnitude: Tensor, cos: Tensor | None = None, sin: Tensor | None = None) -> Tensor:
    """[m cos, m sin] along the last axis (no phase: [m, 0])."""
    if cos is None or sin is None:
        return torch.cat((magnitude, torch.zeros_like(magnitude)), dim=-1)
    return torch.cat((magnitude * cos, magnitude * sin), dim=-1)


def _enabled(ctx: FeatureContext) -> bool:
    return ctx.stack is not None and ctx.stack.polar_pos_emb


def _build(ctx: FeatureContext) -> PolarMagnitudes:
    proj = ctx.projection
    return PolarMagnitudes(proj.k_heads, proj.qk_dim)


POLAR_SPEC = FeatureSpec(
    "polar_pos_emb",
    "2509.10534",
    "qk",
    enabled=_enabled,
    build=_build,
    attr="polar",
    flag_of=lambda ctx: "polar_pos_emb",
)
