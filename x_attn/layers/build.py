"""Building a stack's layers from its config (see :mod:`x_attn.layers.block` for the maths).

Shape legend: d model dim, dc condition dim.
"""

from __future__ import annotations

import torch
from torch import nn

from x_attn.attention.attention import Attention
from x_attn.attention.features.value_residual import value_residual_roles
from x_attn.config import LayersConfig
from x_attn.layer_values import layer_config
from x_attn.layers.block import StackLayer
from x_attn.layers.conditioning import AdaptiveLayerScale, condition_mlp
from x_attn.layers.feedforward import FeedForward, zero_init_
from x_attn.layers.layerscale import LayerScale
from x_attn.layers.mv_split import MVSplitResidual
from x_attn.layers.norms import make_norm
from x_attn.layers.orthog_residual import OrthogonalResidual
from x_attn.layers.pattern import macaron_ff_scale
from x_attn.layers.plan import LayerPlan, per_module
from x_attn.layers.residual import make_residual
from x_attn.layers.shift import ShiftTokens, shift_amounts
from x_attn.positional.stack_positions import requested_rotary_dim


def build_layers(cfg: LayersConfig, plan: LayerPlan) -> nn.ModuleList:
    """One :class:`StackLayer` per module of ``plan``, with its per-layer values."""
    n = len(plan.types)
    scales = macaron_ff_scale(plan.types, cfg.macaron)
    dropouts = per_module(cfg.layer_dropout, n, "layer_dropout", "")
    checkpointed = per_module(cfg.checkpoint_layers, n, "checkpoint_layers", "")
    shifts = per_module(cfg.shift_tokens, n, "shift_tokens", "")
    roles = value_residual_roles(
        plan.types, cfg.add_value_residual, cfg.learned_value_residual_mix, plan.order
    )
    seen = {"a": 0, "c": 0, "f": 0}
    layers = []
    per_layer = zip(plan.types, scales, dropouts, shifts, roles, checkpointed)
    for kind, scale, dropout, shift, role, checkpoint in per_layer:
        layer = build_layer(cfg, kind, seen[kind], scale, role)
        seen[kind] += 1
        layer.dropout, layer.checkpointed = float(dropout), checkpoint
        if shift:
            layer.shift = ShiftTokens(shift_amounts(shift, cfg.causal))
        layers.append(layer)
    return nn.ModuleList(layers)


def make_final_norm(cfg: LayersConfig) -> nn.Module:
    """The norm after the last layer: pre-norm stacks (unless switched off) and ResiDual."""
    pre = cfg.pre_norm and cfg.pre_norm_has_final_norm and not cfg.pre_and_post_norm
    if (pre and not cfg.use_rezero) or cfg.resi_dual:
        return stack_norm(cfg)
    return nn.Identity()


def make_condition_mlp(cfg: LayersConfig) -> nn.Module | None:
    """The condition MLP shared by every adaptive norm (adaptive_condition_mlp), or None."""
    if not cfg.adaptive_condition_mlp:
        return None
    return condition_mlp(cfg.dim_condition or cfg.dim, cfg.adaptive_condition_mlp_expansion)


def build_layer(
    cfg: LayersConfig, kind: str, index: int, scale: float, value_role: str | None = None
) -> StackLayer:
    """The layer of type ``kind`` (its ``index``-th of that type) of a stack configured by
    ``cfg``; ``scale`` is its macaron half step (else 1); ``value_role`` its value residual
    role (see :func:`x_attn.attention.features.value_residual.value_residual_roles`)."""
    block = _block(cfg, kind, index, value_role)
    norm_dim = condition_dim(cfg)
    norm = nn.Identity() if cfg.use_rezero else stack_norm(cfg)
    # under a sandwich norm the macaron half step acts before the norm, as in x-transformers
    res_scale, branch_scale = (1.0, scale) if cfg.sandwich_norm else (scale, 1.0)
    residual = _residual_rule(cfg, res_scale)
    layer = StackLayer(kind, norm, block, residual, cfg.pre_norm and not cfg.resi_dual)
    if not isinstance(cfg.scale_residual, bool):
        branch_scale *= float(cfg.scale_residual)
    layer.branch_scale, layer.residual_constant = branch_scale, float(cfg.scale_residual_constant)
    if cfg.scale_residual:  # a float also gets the learned residual scale, as in x-transformers
        layer.residual_scale = nn.Parameter(torch.ones(cfg.dim))
    if cfg.sandwich_norm:
        layer.branch_norm = stack_norm(cfg)
    if cfg.pre_and_post_norm:
        layer.post_norm = stack_norm(cfg)
    if cfg.use_layerscale:
        layer.layerscale = LayerScale(cfg.dim, cfg.layerscale_init_value)
    elif cfg.use_adaptive_layerscale:
        layer.layerscale = AdaptiveLayerScale(cfg.dim, norm_dim)
    return layer


def _residual_rule(cfg: LayersConfig, scale: float) -> nn.Module:
    """The rule merging a branch into the stream: orthogonal, mean-variance split or the
    plain / ReZero / gated ones (:func:`make_residual`)."""
    if cfg.orthog_residual:
        return OrthogonalResidual(cfg.dim, scale=scale)
    if cfg.mv_split_residual:
        return MVSplitResidual(cfg.dim, scale=scale, **cfg.residual_fn_kwargs)
    return make_residual(cfg.dim, rezero=cfg.use_rezero, gated=cfg.gate_residual, scale=scale)


def stack_norm(cfg: LayersConfig) -> nn.Module:
    """One norm of the kind the stack uses."""
    return make_norm(
        cfg.norm, cfg.dim, condition_dim(cfg), cfg.dynamic_tanh_init_alpha, cfg.norm_eps
    )


def condition_dim(cfg: LayersConfig) -> int:
    """Width of the condition the norms and layerscales read (after the condition MLP)."""
    dim = cfg.dim_condition or cfg.dim
    return dim * cfg.adaptive_condition_mlp_expansion if cfg.adaptive_condition_mlp else dim


def _block(cfg: LayersConfig, kind: str, index: int, value_role: str | None) -> nn.Module:
    if kind == "f":
        block: nn.Module = FeedForward(cfg.dim, layer_config(cfg, "ff", index))
        if cfg.zero_init_branch_output:
            zero_init_(block.proj_out)
        return block
    if kind == "a":
        block = Attention(
            cfg.dim,
            cfg.heads,
            causal=cfg.causal,
            config=layer_config(cfg, "attn", index),
            residual_attn=cfg.residual_attn,
            rotary_dim=requested_rotary_dim(cfg),
            layer_index=index,
            value_residual_role=value_role,
            stack_config=cfg,
        )
    else:
        block = Attention(
            cfg.dim,
            cfg.heads,
            config=layer_config(cfg, "cross_attn", index),
            flag_prefix="cross_attn_",
            residual_attn=cfg.cross_residual_attn,
            layer_index=index,
            value_residual_role=value_role,
        )
    _check_dim_out(block, cfg.dim)
    if cfg.zero_init_branch_output:  # every linear map of the output stage: the output is 0
        for module in block.to_out.modules():
            if isinstance(module, nn.Linear):
                zero_init_(module)
    return block


def _check_dim_out(block: Attention, dim: int) -> None:
    """A stack adds every attention output to its residual stream of width ``dim``."""
    dim_out = block.config.dim_out
    if dim_out is not None and dim_out != dim:
        flag = f"{block.flag_prefix}dim_out"
        raise ValueError(
            f"{flag}={dim_out}: a stack adds each attention output to its residual stream of "
            f"width dim={dim}; drop {flag} (it is for a standalone Attention)"
        )
