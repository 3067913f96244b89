"""Positional methods: absolute (learned, sinusoidal, scaled), rotary (+ scalings, xPos), T5
bias, ALiBi, dynamic bias; Shaw relative embeddings live in the attention features."""

from x_attn.positional.absolute import (
    AbsolutePositionalEmbedding,
    ScaledSinusoidalEmbedding,
    SinusoidalEmbedding,
    sinusoidal_table,
)
from x_attn.positional.alibi import AlibiPositionalBias, alibi_slopes
from x_attn.positional.dynamic import DynamicPositionBias
from x_attn.positional.rotary import RotaryEmbedding, RotaryTable, apply_rotary
from x_attn.positional.rotary_scaling import Llama3Scaling, YarnScaling
from x_attn.positional.t5 import T5RelativePositionBias, t5_relative_bucket

__all__ = [
    "AbsolutePositionalEmbedding",
    "AlibiPositionalBias",
    "DynamicPositionBias",
    "Llama3Scaling",
    "RotaryEmbedding",
    "RotaryTable",
    "ScaledSinusoidalEmbedding",
    "SinusoidalEmbedding",
    "T5RelativePositionBias",
    "YarnScaling",
    "alibi_slopes",
    "apply_rotary",
    "sinusoidal_table",
    "t5_relative_bucket",
]
