"""Typed, frozen configuration objects.

The public constructors (``Decoder(dim=..., attn_dim_head=..., ff_glu=...)``) take flat
x-transformers style keyword arguments; :mod:`x_attn.routing` turns them into the objects
below at once, and every internal module takes one of these objects instead of raw kwargs.
Each ``validate`` raises ValueError naming the flag and the fix.
The attention and feed-forward configs live in :mod:`x_attn.config_attention` and
:mod:`x_attn.config_feedforward`; this module keeps the stack's :class:`LayersConfig` and
re-exports them, so ``from x_attn.config import ...`` is the one import path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from x_attn.config_attention import AttentionConfig
from x_attn.config_feedforward import FeedForwardConfig

__all__ = ["AttentionConfig", "FeedForwardConfig", "LayersConfig", "NormKind"]

NormKind = Literal[
    "layernorm",
    "rmsnorm",
    "scalenorm",
    "simple_rmsnorm",
    "adaptive_layernorm",
    "adaptive_rmsnorm",
    "dynamic_tanh",
    "derf",
]


@dataclass(frozen=True)
class LayersConfig:
    """Options of a whole stack of attention / feed-forward layers."""

    dim: int
    depth: int | None  # None: the number of layers run (custom_layers / layers_execute_order)
    heads: int = 8
    causal: bool = False
    cross_attend: bool = False
    only_cross: bool = False
    pre_norm: bool = True
    norm: NormKind = "layernorm"
    norm_eps: float | None = None  # eps of every norm of the stack; None: each kind's default
    use_rezero: bool = False
    rotary_pos_emb: bool = False
    rotary_emb_dim: int | None = None
    rotary_base: float = 10000.0
    rotary_interpolation_factor: float = 1.0
    rotary_base_rescale_factor: float = 1.0
    rotary_interleaved: bool = False
    rotary_xpos: bool = False
    rotary_xpos_scale_base: float = 512.0
    rotary_yarn_factor: float | None = None
    rotary_yarn_original_max_len: int | None = None
    rotary_yarn_beta_fast: float = 32.0
    rotary_yarn_beta_slow: float = 1.0
    rotary_yarn_attn_factor: float | None = None
    rotary_llama3_factor: float | None = None
    rotary_llama3_original_max_len: int | None = None
    rotary_llama3_low_freq_factor: float = 1.0
    rotary_llama3_high_freq_factor: float = 4.0
    rel_pos_bias: bool = False
    rel_pos_num_buckets: int = 32
    rel_pos_max_distance: int = 128
    alibi_pos_bias: bool = False
    alibi_num_heads: int | None = None
    dynamic_pos_bias: bool = False
    dynamic_pos_bias_log_distance: bool = False
    dynamic_pos_bias_mlp_depth: int = 2
    dynamic_pos_bias_norm: bool = False
    rel_pos_kwargs: dict[str, Any] = field(default_factory=dict)
    shaw_rel_pos: bool = False
    shaw_max_distance: int = 16
    shaw_rel_values: bool = True
    polar_pos_emb: bool = False  # PoPE (x_attn/attention/features/polar.py)
    position_infused_attn: bool = False
    residual_attn: bool = False
    cross_residual_attn: bool = False
    macaron: bool = False
    sandwich_coef: int | None = None
    custom_layers: tuple[str, ...] | None = None
    gate_residual: bool = False
    reversible: bool = False
    # residual and norm structure (x_attn.layers.block)
    pre_norm_has_final_norm: bool = True
    pre_and_post_norm: bool = False
    sandwich_norm: bool = False
    resi_dual: bool = False
    resi_dual_scale: float = 1.0
    unet_skips: bool = False  # long skips between mirrored blocks (x_attn.layers.unet)
    orthog_residual: bool = False  # x_attn.layers.orthog_residual
    mv_split_residual: bool = False  # x_attn.layers.mv_split
    residual_fn_kwargs: dict[str, Any] = field(default_factory=dict)  # mv_split_residual's
    reinject_input: bool = False  # every block reads the stack input again (layers/reinject.py)
    learned_reinject_input_gate: bool = False
    use_layerscale: bool = False
    layerscale_init_value: float = 0.0
    scale_residual: bool | float = False
    scale_residual_constant: float = 1.0
    zero_init_branch_output: bool = False
    add_value_residual: bool = False
    learned_value_residual_mix: bool = True
    softclamp_output: bool = False
    softclamp_output_value: float = 30.0
    dynamic_tanh_init_alpha: float = 1.0
    # conditioning (adaptive norms / layerscale, x_attn.layers.conditioning)
    dim_condition: int | None = None
    use_adaptive_layerscale: bool = False
    adaptive_condition_mlp: bool = False
    adaptive_condition_mlp_expansion: int = 4
    # which layer runs when (x_attn.layers.plan), per layer: a value or one per layer
    layer_dropout: float | tuple[float, ...] = 0.0
    checkpoint_layers: bool | tuple[bool, ...] = False
    shift_tokens: int | tuple[int, ...] = 0
    weight_tie_layers: bool = False
    layers_execute_order: tuple[int, ...] | None = None
    # per-layer block options: (bucket "attn" / "cross_attn" / "ff", field, one value per layer)
    layer_values: tuple[tuple[str, str, tuple], ...] = ()
    attn: AttentionConfig = field(default_factory=AttentionConfig)
    cross_attn: AttentionConfig = field(default_factory=AttentionConfig)
    ff: FeedForwardConfig = field(default_factory=FeedForwardConfig)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-friendly dict (nested configs as dicts)."""
        return asdict(self)
