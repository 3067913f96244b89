"""Training recipes: model shape, optimiser and schedule of a character-level GPT.

``default`` is tuned to reach <= 1.55 nats/char on the held-out plays in under 5 minutes on
2 CPU cores; ``nanogpt`` is nanoGPT's CPU recipe for tiny Shakespeare (learned positions,
LayerNorm, GELU MLP, multi-head attention, 4 layers x 4 heads x 128 wide, context 64, batch 12,
2,000 steps), expressed with x_attn flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from x_attn.catalog import mechanism
from x_attn.layers.stack import Decoder
from x_attn.wrappers.token import TransformerWrapper

__all__ = ["RECIPES", "Recipe", "build_model"]


@dataclass(frozen=True)
class Recipe:
    """Everything that defines a training run except the data and the seed."""

    dim: int = 128
    depth: int = 4
    heads: int = 4
    context: int = 64
    batch: int = 12
    steps: int | None = 2000
    time_budget: float | None = None  # seconds of training (validation excluded)
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    dropout: float = 0.0
    layer_flags: dict[str, Any] = field(default_factory=dict)
    wrapper_flags: dict[str, Any] = field(default_factory=dict)
    eval_every: int = 250
    eval_tokens: int = 16384
    final_eval_tokens: int = 131072

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)


RECIPES: dict[str, Recipe] = {
    # tied logits without a scale, as in nanoGPT (x_attn's default scale is x-transformers'
    # dim ** -0.5, which slows these small models down: 1.75 instead of 1.61 nats/char)
    "nanogpt": Recipe(wrapper_flags={"tie_embedding": True, "tie_embedding_scale": 1.0}),
    "default": Recipe(
        dim=128,
        context=128,
        batch=16,
        steps=2500,
        time_budget=270.0,
        lr=3e-3,
        layer_flags={
            "rotary_pos_emb": True,
            "ff_glu": True,
            "use_rmsnorm": True,
            # token shift and value residual learning (with lr 3e-3 instead of 2e-3): 0.11
            # nats/char lower at 700 steps, for a few % more time per step (docs/training.md)
            "shift_tokens": 1,
            "add_value_residual": True,
        },
        wrapper_flags={"tie_embedding": True, "tie_embedding_scale": 1.0, "use_abs_pos_emb": False},
    ),
}


def build_model(recipe: Recipe, num_tokens: int, attention: str = "mha") -> TransformerWrapper:
    """The GPT of ``recipe`` with the attention mechanism ``attention`` (see x_attn.catalog)."""
    entry = mechanism(attention)
    if not entry.available:
        raise ValueError(f"--attention {attention}: {entry.unavailable_reason}")
    if recipe.dim % recipe.heads:
        raise ValueError(
            f"--dim {recipe.dim} is not divisible by --heads {recipe.heads}; pick a width that "
            "is a multiple of the number of heads"
        )
    layers = Decoder(
        dim=recipe.dim,
        depth=recipe.depth,
        heads=recipe.heads,
        attn_dim_head=recipe.dim // recipe.heads,
        attn_dropout=recipe.dropout,
        ff_dropout=recipe.dropout,
        **{**recipe.layer_flags, **entry.flags},
    )
    return TransformerWrapper(
        num_tokens=num_tokens,
        max_seq_len=recipe.context,
        attn_layers=layers,
        emb_dropout=recipe.dropout,
        **recipe.wrapper_flags,
    )
