"""Typed, frozen configuration objects.

The public constructors (``Decoder(dim=..., attn_dim_head=..., ff_glu=...)``) take flat
x-transformers style keyword arguments; :mod:`x_attn.routing` turns them into the objects
below at once, and every internal module takes one of these objects instead of raw kwargs.
Each ``validate`` raises ValueError naming the flag and the fix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from x_attn.config_checks import validate_attention_extras
from x_attn.utils import check_positive_int, check_probability

NormKind = Literal["layernorm", "rmsnorm", "scalenorm"]


@dataclass(frozen=True)
class AttentionConfig:
    """Options of one attention block (``attn_*`` / ``cross_attn_*`` flags)."""

    dim_head: int = 64
    dropout: float = 0.0
    flash: bool | None = None  # None: automatic; True: fused required; False: manual path
    num_mem_kv: int = 0
    sparse_topk: int | None = None
    use_entmax15: bool = False
    talking_heads: bool = False
    pre_talking_heads: bool = False
    post_talking_heads: bool = False
    collab_heads: bool = False
    collab_compression: float = 0.3
    on_attn: bool = False
    qk_norm: bool = False
    qk_norm_groups: int = 1
    qk_norm_scale: float = 10.0
    qk_norm_dim_scale: bool = False
    qk_rmsnorm: bool = False
    k_rmsnorm: bool = False
    value_rmsnorm: bool = False
    softclamp_logits: bool = False
    logit_softclamp_value: float = 50.0
    add_zero_kv: bool = False
    head_learned_sink: bool = False
    gate_value_heads: bool = False
    head_scale: bool = False
    gate_values: bool = False
    gate_values_rank: int | None = None
    gate_values_headwise: bool = False
    output_gate: bool = False
    output_gate_rank: int | None = None
    output_gate_headwise: bool = False
    low_rank_silu_gates: bool = True
    swiglu_values: bool = False

    @property
    def uses_pre_talking_heads(self) -> bool:
        return self.talking_heads or self.pre_talking_heads

    @property
    def uses_post_talking_heads(self) -> bool:
        return self.talking_heads or self.post_talking_heads

    def validate(self, owner: str, prefix: str = "attn_") -> None:
        check_positive_int(f"{prefix}dim_head", self.dim_head, owner)
        check_probability(f"{prefix}dropout", self.dropout, owner)
        if self.flash not in (None, True, False):
            raise TypeError(f"{owner}: '{prefix}flash' must be None, True or False")
        if self.num_mem_kv < 0:
            raise ValueError(f"{owner}: '{prefix}num_mem_kv' must be >= 0, got {self.num_mem_kv}")
        if self.sparse_topk is not None:
            check_positive_int(f"{prefix}sparse_topk", self.sparse_topk, owner)
        if self.sparse_topk is not None and self.use_entmax15:
            raise ValueError(
                f"{owner}: '{prefix}sparse_topk' and '{prefix}use_entmax15' both replace the "
                "softmax's support; choose one"
            )
        if not 0.0 < self.collab_compression <= 1.0:
            raise ValueError(
                f"{owner}: '{prefix}collab_compression' must be in (0, 1], "
                f"got {self.collab_compression}"
            )
        validate_attention_extras(self, owner, prefix)


@dataclass(frozen=True)
class FeedForwardConfig:
    """Options of the position-wise feed-forward block (``ff_*`` flags)."""

    mult: float = 4
    glu: bool = False
    swish: bool = False
    no_bias: bool = False
    dropout: float = 0.0

    def validate(self, owner: str) -> None:
        if not isinstance(self.mult, (int, float)) or self.mult <= 0:
            raise ValueError(f"{owner}: 'ff_mult' must be a positive number, got {self.mult!r}")
        check_probability("ff_dropout", self.dropout, owner)


@dataclass(frozen=True)
class LayersConfig:
    """Options of a whole stack of attention / feed-forward layers."""

    dim: int
    depth: int
    heads: int = 8
    causal: bool = False
    cross_attend: bool = False
    only_cross: bool = False
    pre_norm: bool = True
    norm: NormKind = "layernorm"
    use_rezero: bool = False
    rotary_pos_emb: bool = False
    rotary_emb_dim: int | None = None
    rotary_base: float = 10000.0
    rotary_interpolation_factor: float = 1.0
    rel_pos_bias: bool = False
    rel_pos_num_buckets: int = 32
    rel_pos_max_distance: int = 128
    alibi_pos_bias: bool = False
    alibi_num_heads: int | None = None
    position_infused_attn: bool = False
    residual_attn: bool = False
    cross_residual_attn: bool = False
    macaron: bool = False
    sandwich_coef: int | None = None
    custom_layers: tuple[str, ...] | None = None
    gate_residual: bool = False
    reversible: bool = False
    add_value_residual: bool = False
    learned_value_residual_mix: bool = True
    softclamp_output: bool = False
    softclamp_output_value: float = 30.0
    attn: AttentionConfig = field(default_factory=AttentionConfig)
    cross_attn: AttentionConfig = field(default_factory=AttentionConfig)
    ff: FeedForwardConfig = field(default_factory=FeedForwardConfig)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-friendly dict (nested configs as dicts)."""
        return asdict(self)
