"""Registry entries of feed-forward variants: activations and soft-clamping.

See :mod:`x_attn.registry` for what an entry holds and how the tests use it.
"""

from __future__ import annotations

from torch import nn

from x_attn.registry.case import FlagCase

FEEDFORWARD: tuple[FlagCase, ...] = (
    FlagCase(
        "ff_relu_squared",
        "squared ReLU, then a LayerNorm over the hidden features",
        "2109.08668",
        {"ff_relu_squared": True, "ff_post_act_ln": True},
    ),
    FlagCase(
        "ff_custom_activation",
        "any activation module, copied per layer",
        "",
        {"ff_custom_activation": nn.Sigmoid()},
    ),
    FlagCase("ff_solu", "softmax linear unit activation", "", {"ff_solu": True}),
    FlagCase(
        "ff_softclamp_value",
        "hidden layer soft-clamped before the activation",
        "2408.00118",
        {"ff_softclamp_value": 1.0},
    ),
    FlagCase(
        "ff_glu_softclamp",
        "GLU with soft-clamped linear factor and gate, learned output multiplier",
        "",
        {"ff_glu": True, "ff_glu_softclamp": True, "ff_glu_mult_bias": True},
    ),
)
