"""Positional methods: absolute (learned, sinusoidal, scaled), rotary, T5 bias, ALiBi."""

from x_attn.positional.absolute import (
    AbsolutePositionalEmbedding,
    ScaledSinusoidalEmbedding,
    sinusoidal_table,
)
from x_attn.positional.alibi import AlibiPositionalBias, alibi_slopes
from x_attn.positional.rotary import RotaryEmbedding, apply_rotary
from x_attn.positional.t5 import T5RelativePositionBias, t5_relative_bucket

__all__ = [
    "AbsolutePositionalEmbedding",
    "AlibiPositionalBias",
    "RotaryEmbedding",
    "ScaledSinusoidalEmbedding",
    "T5RelativePositionBias",
    "alibi_slopes",
    "apply_rotary",
    "sinusoidal_table",
    "t5_relative_bucket",
]
