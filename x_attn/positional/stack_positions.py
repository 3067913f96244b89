"""Builds the per-forward PositionContext of a stack from its positional flags.

Shape legend: b batch (1 when shared), h heads, n / k_len positions, j context length.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from x_attn.config import LayersConfig
from x_attn.positional.absolute import sinusoidal_table
from x_attn.positional.alibi import AlibiPositionalBias
from x_attn.positional.checks import uses_rotary
from x_attn.positional.context import PositionContext
from x_attn.positional.dynamic import DynamicPositionBias
from x_attn.positional.rotary import RotaryEmbedding
from x_attn.positional.rotary_scaling import FrequencyScaling, Llama3Scaling, YarnScaling
from x_attn.positional.t5 import T5RelativePositionBias
from x_attn.positional.xpos import xpos_max_position
from x_attn.value_checks import require_all


def default_rotary_dim(dim_head: int) -> int:
    """x_attn's default rotary dim: max(dim_head // 2, 32), capped at dim_head, even."""
    r = min(max(dim_head // 2, 32), dim_head)
    return r - r % 2


def requested_rotary_dim(config: LayersConfig) -> int | None:
    """The rotary dim a stack offers its self-attention projections (None without rotary).

    A projection with a separate rotary part (MLA's decoupled rotary dims) is sized by it.
    """
    if not uses_rotary(config):
        return None
    return config.rotary_emb_dim or default_rotary_dim(config.attn.dim_head)


def _scaling(config: LayersConfig) -> FrequencyScaling | None:
    if config.rotary_yarn_factor is not None:
        return YarnScaling(
            config.rotary_yarn_factor,
            config.rotary_yarn_original_max_len,
            config.rotary_yarn_beta_fast,
            config.rotary_yarn_beta_slow,
            config.rotary_yarn_attn_factor,
        )
    if config.rotary_llama3_factor is not None:
        return Llama3Scaling(
            config.rotary_llama3_factor,
            config.rotary_llama3_original_max_len,
            config.rotary_llama3_low_freq_factor,
            config.rotary_llama3_high_freq_factor,
        )
    return None


def _rotary(
    config: LayersConfig, qk_dim: int, qk_flags: tuple[str, ...], owner: str, fixed: int | None
) -> RotaryEmbedding:
    """The stack's RotaryEmbedding (``fixed``: the dim the projections were built for, if any),
    refused when the query/key head has no pair of dims to rotate."""
    flag = "rotary_pos_emb" if config.rotary_pos_emb else "rotary_xpos"
    raise_flags = " or ".join(qk_flags)
    if fixed is None and qk_dim < 2:
        raise ValueError(
            f"{owner}: {flag}=True rotates query/key dims in pairs, but the "
            f"self-attention query/key head dim is {qk_dim} (set by {', '.join(qk_flags)}); "
            f"raise {raise_flags} to give it at least 2 dims, or drop {flag}"
        )
    r = fixed or config.rotary_emb_dim or default_rotary_dim(qk_dim)
    if r > qk_dim:
        raise ValueError(
            f"{owner}: rotary_emb_dim={r} exceeds the query/key head dim {qk_dim}; "
            f"lower rotary_emb_dim or raise {raise_flags}"
        )
    try:
        scaling = _scaling(config)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{owner}: {error}") from None
    return RotaryEmbedding(
        r,
        base=config.rotary_base,
        interpolation_factor=config.rotary_interpolation_factor,
        base_rescale_factor=config.rotary_base_rescale_factor,
        scaling=scaling,
        xpos_scale_base=config.rotary_xpos_scale_base if config.rotary_xpos else None,
        interleaved=config.rotary_interleaved,
    )


def _bias(config: LayersConfig) -> nn.Module | None:
    if config.rel_pos_bias:
        return T5RelativePositionBias(
            config.heads,
            causal=config.causal,
            num_buckets=config.rel_pos_num_buckets,
            max_distance=config.rel_pos_max_distance,
        )
    if config.alibi_pos_bias:
        return AlibiPositionalBias(
            config.alibi_num_heads or config.heads,
            total_heads=config.heads,
            slopes=config.rel_pos_kwargs.get("slopes"),
        )
    if config.dynamic_pos_bias:
        return DynamicPositionBias(
            config.dim // 4,
            config.heads,
            depth=config.dynamic_pos_bias_mlp_depth,
            log_distance=config.dynamic_pos_bias_log_distance,
            norm=config.dynamic_pos_bias_norm,
        )
    return None


class StackPositions(nn.Module):
    """The positional modules shared by every layer of one stack (computed once per forward).

    Rotary tables, one additive bias (T5: one learned table for the whole stack, as in T5;
    ALiBi; a dynamic-bias MLP), the sinusoids of position-infused attention. Shaw's relative
    embeddings belong to each layer; the stack only provides their positions.
    """

    def __init__(
        self,
        config: LayersConfig,
        qk_dim: int,
        owner: str,
        rotary_dim: int | None = None,
        qk_flags: tuple[str, ...] = ("attn_dim_head",),
    ) -> None:
        """``qk_dim``: the self-attention query/key head dim, set by the flags ``qk_flags``;
        ``rotary_dim``: the rotary dim the layers' projections were built for, if fixed."""
        super().__init__()
        rotary = uses_rotary(config)
        self.rotary = _rotary(config, qk_dim, qk_flags, owner, rotary_dim) if rotary else None
        if config.polar_pos_emb:  # PoPE: d frequencies over the 2d dims of features/polar.py
            self.rotary = RotaryEmbedding(2 * qk_dim)
        self.polar = config.polar_pos_emb
        self.rel_pos = _bias(config)
        self.infused_dim = config.dim if config.position_infused_attn else None
        self.per_layer = config.shaw_rel_pos  # relative embeddings inside each layer

    @property
    def is_relative(self) -> bool:
        """True when positions enter every layer (rotary, a bias, infused, Shaw)."""
        tables = (self.rotary, self.rel_pos, self.infused_dim)
        return self.per_layer or any(x is not None for x in tables)

    @property
    def takes_per_head_positions(self) -> bool:
        """Per-head positions (b, h, n) reach only an additive bias."""
        return self.rotary is None and self.infused_dim is None and not self.per_layer

    def forward(
        self,
        q_len: int,
        k_len: int,
        device: torch.device,
        dtype: torch.dtype,
        start: int = 0,
        values: Tensor | None = None,
        context_values: Tensor | None = None,
    ) -> PositionContext:
        """Tables for slots start ... start + k_len - 1, the last q_len being the queries.

        ``values``: the position of each of the k_len slots ((k_len,), (b, k_len) or
        (b, h, k_len)) when not the slot itself; ``context_values``: (j,) or (b, j) positions
        of a cross-attention context (rotary only).
        """
        context = PositionContext(q_len=q_len, k_len=k_len, start=start, values=values)
        if not self.is_relative:
            return context
        table_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        slots = values is None and (self.rotary is None or self.rotary.xpos_scale_base is None)
        if self.rotary is not None and slots:  # the slots themselves: rows of the kept table
            context.rotary = self.rotary.slot_table(start, start + k_len, device, table_dtype)
        if slots and self.rel_pos is None and self.infused_dim is None:
            k_pos = None  # nothing else reads the positions
        else:
            k_pos = torch.arange(start, start + k_len, device=device) if values is None else values
        if self.rotary is not None and context.rotary is None:
            self._check_xpos_range(k_pos, dtype)
            context.rotary = self.rotary.table(k_pos, dtype=table_dtype)
        if self.rotary is not None and context_values is not None:
            self._check_context_positions()
            self._check_xpos_range(context_values, dtype)
            context.context_rotary = self.rotary.table(context_values, dtype=table_dtype)
        if k_pos is None:
            return context
        q_pos = k_pos[..., k_len - q_len :]
        if self.rel_pos is not None:
            context.bias = self.rel_pos(q_pos, k_pos)
        if self.infused_dim is not None:
            context.infused = sinusoidal_table(
                k_pos.flatten(), self.infused_dim, dtype=table_dtype
            ).unflatten(0, k_pos.shape)
        return context

    def _check_context_positions(self) -> None:
        if self.polar:
            raise ValueError(
                "context_pos places a cross-attention context for rotary embeddings, but "
                "polar_pos_emb acts on self-attention only (its cross-attention keys have no "
                "polar form); drop context_pos"
            )

    def _check_xpos_range(self, positions: Tensor, dtype: torch.dtype) -> None:
        rotary = self.rotary
        if rotary.xpos_scale_base is None or positions.numel() == 0:
            return
        limit = xpos_max_position(rotary.dim, rotary.xpos_scale_base, dtype)
        require_all(
            positions.abs() <= limit,
            f"rotary_xpos: position (the largest given) beyond {limit}, the furthest whose "
            f"xPos factors zeta ** (p / rotary_xpos_scale_base={rotary.xpos_scale_base:g}) "
            "stay finite in "
            f"{dtype} (keys grow, queries shrink with the position); raise "
            "rotary_xpos_scale_base, use a wider dtype, or drop rotary_xpos",
            lambda: f" (got position {float(positions.abs().max()):g})",
        )
