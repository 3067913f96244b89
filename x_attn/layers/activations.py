"""Feed-forward activations and soft clamping.

- ``softclamp(t, c) = c * tanh(t / c)``: a smooth clamp to (-c, c), near the identity for
  ``|t| << c`` (logit soft-capping of Gemma 2, Gemma Team, arXiv 2408.00118).
- ReluSquared: ``relu(x)^2`` (Primer, So et al., "Primer: Searching for Efficient Transformers
  for Language Modeling", arXiv 2109.08668).
- SoLU: ``LayerNorm(x * softmax(x))`` over the hidden features (Elhage et al., "Softmax Linear
  Units", Transformer Circuits Thread, 2022; no arXiv id).
- Soft-clamped GELU / SiLU of a GLU gate, as in x-transformers' ``ff_glu_softclamp``:
  ``softclamp(g, c) * Phi(g)`` (GELU's factor is the normal CDF ``Phi``) and
  ``softclamp(g, c) * sigmoid(g)``; the GLU's linear factor is clamped too.

Shape legend: any leading shape, e hidden features (the last axis).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from x_attn.config import FeedForwardConfig
from x_attn.layers.norms import LayerNorm
from x_attn.utils import compute_dtype


def softclamp(t: Tensor, value: float) -> Tensor:
    """``value * tanh(t / value)``."""
    return (t / value).tanh() * value


class ReluSquared(nn.Module):
    """``relu(x) ** 2``."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x).square()


class SoLU(nn.Module):
    """``LayerNorm(x * softmax(x))`` over the last axis (width ``dim``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        # the softmax normaliser in float32 for half-precision inputs
        return self.norm(x * x.softmax(dim=-1, dtype=compute_dtype(x.dtype)).to(x.dtype))


class SoftclampedGate(nn.Module):
    """``softclamp(g, value) * Phi(g)`` (GELU form) or ``* sigmoid(g)`` (SiLU form)."""

    def __init__(self, value: float, swish: bool) -> None:
        super().__init__()
        self.value, self.swish = float(value), swish

    def forward(self, g: Tensor) -> Tensor:
        factor = torch.sigmoid(g) if self.swish else torch.special.ndtr(g)
        return softclamp(g, self.value) * factor

    def extra_repr(self) -> str:
        return f"value={self.value}, {'silu' if self.swish else 'gelu'}"


def make_activation(config: FeedForwardConfig, inner: int) -> nn.Module:
    """The activation the options choose (a custom module is copied, one per layer)."""
    if config.custom_activation is not None:
        return copy.deepcopy(config.custom_activation)
    if config.glu_softclamp:
        return SoftclampedGate(config.glu_gate_softclamp_value, config.swish)
    if config.relu_squared:
        return ReluSquared()
    if config.solu:
        return SoLU(inner)
    return nn.SiLU() if config.swish else nn.GELU()
