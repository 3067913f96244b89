"""Checkpoints of x-transformers (2.31) loaded into the equivalent x_attn model.

``from_x_transformers(source, model)`` takes an x-transformers model or its ``state_dict`` and
an x_attn model built with the same flags (or its :func:`x_attn.to_config` dict), and loads the
weights so that both compute the same function. The layouts differ in known ways:

- x-transformers keeps each layer as ``(norms, block, residual)``, the block possibly wrapped by
  LayerScale / Scale / ShiftTokens (``.fn``); x_attn names them ``norm``, ``branch_norm``,
  ``post_norm``, ``block``, ``layerscale``.
- its stack norms and layerscales store ``gain - 1`` (``norm_add_unit_offset``) unless they are
  conditioned (adaptive); its norms have no bias; its ScaleNorm gain excludes the ``sqrt(dim)``.
- its T5 bias table is multiplied by ``dim_head ** 0.5`` at lookup;
  its learned positions are multiplied by ``dim ** -0.5`` (unless ``l2norm_embed``) and its
  token embedding sits at ``token_emb.emb``; its logits head has no bias.
- it rotates interleaved query / key pairs ``(2i, 2i + 1)`` where x_attn rotates half-split
  pairs ``(i, i + r/2)``; permuting the query and key dims of every head alike leaves every
  score unchanged, so the rows are permuted on the way in.
- PoPE (``polar_pos_emb``): x-transformers learns one key phase table for the stack, x_attn
  one per layer (the paper's form); each layer gets a copy (equal at load, free afterwards).

A weight on either side that the other cannot hold is refused with a ValueError naming it (an
x-transformers flag x_attn builds differently, or a model built with other flags).

Shape legend: h heads, d head dim, r rotary dim.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from x_attn.layers.stack import AttentionLayers

__all__ = ["from_x_transformers"]

# inside one layer of a stack: (x-transformers pattern, x_attn name); "POST" is resolved per layer
LAYER_RULES = [
    (r"^0\.0\.(.+)$", r"norm.\1"),
    (r"^0\.1\.(.+)$", r"branch_norm.\1"),
    (r"^0\.2\.(.+)$", r"POST.\1"),
    (r"^1\.(?:fn\.)*gamma$", "layerscale.gamma"),
    (r"^1\.(?:fn\.)*to_gamma\.(.+)$", r"layerscale.to_gamma.\1"),
    (r"^2\.residual_scale$", "residual_scale"),
    (r"^2\.(alpha|beta|to_alpha\.\w+|to_beta\.\w+)$", r"residual.\1"),  # mv_split_residual
    # feed-forward
    (r"^1\.(?:fn\.)*ff\.0\.(?:0|proj)\.(.+)$", r"block.proj_in.\1"),
    (r"^1\.(?:fn\.)*ff\.0\.mult_bias$", "block.mult_bias"),
    (r"^1\.(?:fn\.)*ff\.1\.gamma$", "block.post_act_norm.weight"),
    (r"^1\.(?:fn\.)*ff\.[23]\.(.+)$", r"block.proj_out.\1"),
    # attention
    (r"^1\.(?:fn\.)*(to_[qkv])\.(.+)$", r"block.proj.\1.\2"),
    (r"^1\.(?:fn\.)*to_out\.(.+)$", r"block.to_out.\1"),
    (r"^1\.(?:fn\.)*mem_([kv])$", r"block.memory_kv.mem_\1"),
    (r"^1\.(?:fn\.)*qk_norm_([qk])_scale$", r"block.qk_norm.\1_scale"),
    (r"^1\.(?:fn\.)*([qk])_rmsnorm\.gamma$", r"block.qk_rmsnorm.\1_norm.gamma"),
    (r"^1\.(?:fn\.)*value_rmsnorm\.gamma$", "block.value_rmsnorm.norm.gamma"),
    (r"^1\.(?:fn\.)*attend\.head_attn_sink$", "block.head_learned_sink.sink"),
    (r"^1\.(?:fn\.)*attend\.cope\.pos_emb$", "block.cope.pos_emb"),
    (r"^1\.(?:fn\.)*head_scale_params$", "block.head_scale.scale"),
    (r"^1\.(?:fn\.)*to_v_head_gate\.(.+)$", r"block.gate_value_heads.to_gates.\1"),
    (r"^1\.(?:fn\.)*to_v_gate\.weight$", "block.gate_values.input_gate.up.weight"),
    (r"^1\.(?:fn\.)*to_v_gate\.(down|up)\.(.+)$", r"block.gate_values.input_gate.\1.\2"),
    (r"^1\.(?:fn\.)*to_output_gate\.weight$", "block.gate_values.output_gate.up.weight"),
    (r"^1\.(?:fn\.)*to_output_gate\.(down|up)\.(.+)$", r"block.gate_values.output_gate.\1.\2"),
    (r"^1\.(?:fn\.)*to_value_residual_mix\.0\.(.+)$", r"block.value_residual.to_mix.\1"),
    (
        r"^1\.(?:fn\.)*data_dependent_alibi\.to_forget_gates\.0\.(.+)$",
        r"block.forget_gates.to_gates.\1",
    ),
]
# the rest of a stack (outside its layers)
STACK_RULES = [
    (r"^final_norm\.(.+)$", r"final_norm.\1"),
    (r"^rel_pos\.relative_attention_bias\.(.+)$", r"positions.rel_pos.relative_attention_bias.\1"),
    (r"^adaptive_mlp\.0\.(.+)$", r"condition_mlp.0.\1"),
    (r"^skip_combines\.(\d+)\.combine\.weight$", r"unet.combines.\1.weight"),
]
# a wrapper around a stack (TransformerWrapper, ContinuousTransformerWrapper)
WRAPPER_RULES = [
    (r"(^|\.)token_emb\.emb\.", r"\1token_emb."),
    (r"(^|\.)post_emb_norm\.gamma$", r"\1post_emb_norm.weight"),
    (r"(^|\.)attn_pool\.pooler\.(to_[qkv])\.", r"\1attn_pool.pooler.proj.\2."),
    (r"^to_mixture\.0\.weight$", "mixture.to_mixture.weight"),
    (r"^combine_mixture\.weight$", "mixture.combine_mixture.weight"),
]
# per query / key dim parameters that follow the rotary permutation (last axis)
PER_QK_DIM = r"(qk_norm\.[qk]_scale|qk_rmsnorm\.[qk]_norm\.gamma|memory_kv\.mem_k|cope\.pos_emb)$"
GAINS = re.compile(r"^(layers\.\d+\.(norm|branch_norm|post_norm)|final_norm)\.(gamma|g)$")


def from_x_transformers(
    source: nn.Module | Mapping[str, Tensor], model: nn.Module | Mapping[str, Any]
) -> nn.Module:
    """Load an x-transformers checkpoint into the equivalent x_attn model.

    Args:
        source: an x-transformers model (``TransformerWrapper``, ``ContinuousTransformerWrapper``,
            ``XTransformer``, ``Encoder`` / ``Decoder``, ...) or its ``state_dict``.
        model: the x_attn model built with the same flags (change the import, build it again),
            or its config (:func:`x_attn.to_config`), from which it is built.

    Returns:
        ``model`` with x-transformers' weights, in the dtype it had.

    Raises:
        TypeError: ``source`` or ``model`` of the wrong kind.
        ValueError: a weight of one side that the other has no place for, or a shape that does
            not match: the two models were not built with the same flags, or with a flag
            x_attn builds differently (the message names the weight).
    """
    if isinstance(model, Mapping):
        from x_attn.serialization import from_config

        model = from_config(dict(model))
    if not isinstance(model, nn.Module):
        raise TypeError(f"from_x_transformers: 'model' must be an x_attn model, got {model!r}")
    state = _state_dict(source)
    target = model.state_dict()
    stacks = _stacks(model)
    _refuse_different_rules(stacks)
    mapped = {}
    for key, value in state.items():
        name, value = _convert(key, value, model, stacks)
        if name is None:
            continue
        if name not in target and name.endswith("norm.gamma"):
            name = name[: -len("gamma")] + "weight"  # a LayerNorm: x_attn uses torch's name
        if name not in target:
            raise ValueError(
                f"from_x_transformers: x-transformers weight {key!r} has no place in the x_attn "
                f"model (looked for {name!r}); build both with the same flags (docs/compat.md)"
            )
        if target[name].shape != value.shape:
            raise ValueError(
                f"from_x_transformers: x-transformers weight {key!r} has shape "
                f"{tuple(value.shape)}, x_attn's {name!r} {tuple(target[name].shape)}; build "
                f"both with the same flags"
            )
        mapped[name] = value.to(target[name].dtype)
    mapped.update(_polar_offsets(state, stacks))
    for name, value in target.items():
        if name not in mapped:
            if not _bias_only_in_x_attn(name):
                raise ValueError(
                    f"from_x_transformers: the checkpoint has no weight for x_attn's {name!r}; "
                    f"build both with the same flags (docs/compat.md)"
                )
            mapped[name] = torch.zeros_like(value)
    model.load_state_dict(mapped)
    return model


def _refuse_different_rules(stacks: dict[str, AttentionLayers]) -> None:
    """Flags both libraries accept but compute differently, with no weight to tell them by."""
    for stack in stacks.values():
        cfg = stack.config
        if cfg.orthog_residual:
            raise ValueError(
                "from_x_transformers: orthog_residual projects each token's update in x_attn "
                "but a whole sequence's in x-transformers 2.31; the checkpoint would compute "
                "differently (docs/compat.md)"
            )
        if cfg.mv_split_residual and cfg.causal:
            raise ValueError(
                "from_x_transformers: mv_split_residual in a causal stack takes running token "
                "means in x_attn but whole-sequence means in x-transformers 2.31; the "
                "checkpoint would compute differently (docs/compat.md)"
            )


def _state_dict(source: Any) -> dict[str, Tensor]:
    if isinstance(source, nn.Module):
        return source.state_dict()
    if isinstance(source, Mapping):
        return dict(source)
    raise TypeError(
        "from_x_transformers: 'source' must be an x-transformers model or its state_dict, "
        f"got {type(source).__name__}"
    )


def _stacks(model: nn.Module) -> dict[str, AttentionLayers]:
    """Every attention stack of ``model`` by its name prefix ("" or "encoder.attn_layers.")."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, AttentionLayers):
            found[f"{name}." if name else ""] = module
    if not found:
        raise TypeError(
            f"from_x_transformers: 'model' must hold an x_attn attention stack, got "
            f"{type(model).__name__}"
        )
    return found


def _convert(
    key: str, value: Tensor, model: nn.Module, stacks: dict[str, AttentionLayers]
) -> tuple[str | None, Tensor]:
    """x_attn's name and value for x-transformers' ``key`` (name None: a derived buffer)."""
    for prefix in sorted(stacks, key=len, reverse=True):
        if key.startswith(prefix):
            return _convert_stack(key[len(prefix) :], value, prefix, stacks[prefix])
    return _convert_wrapper(key, value, model)


def _convert_stack(
    key: str, value: Tensor, prefix: str, stack: AttentionLayers
) -> tuple[str | None, Tensor]:
    if key.endswith("inv_freq"):
        _check_rotary_dim(stack, value)
        return None, value
    if key == "polar_pos_emb.learned_bias":
        return None, value  # one table for the stack: see _polar_offsets
    layer = re.match(r"^layers\.(\d+)\.(.+)$", key)
    if layer is None:
        name = _apply(STACK_RULES, key) or _dynamic_bias(key) or key
        if name.endswith("relative_attention_bias.weight"):  # x-transformers scales at lookup
            value = value * stack.config.attn.dim_head**0.5
    else:
        index, inner = layer.groups()
        name = _apply(LAYER_RULES, inner) or inner
        if name.startswith("POST."):
            block = stack.layers[int(index)]
            post = getattr(block, "post_norm", None) is not None
            name = ("post_norm" if post else "norm") + name[4:]
        if name.startswith("block.proj.") and hasattr(stack.layers[int(index)].block.proj, "inner"):
            name = "block.proj.inner." + name[len("block.proj.") :]  # a feature map wraps it
        name = f"layers.{index}.{name}"
        value = _rotary_rows(name, value, stack)
    return prefix + name, _gain(name, value, stack)


def _convert_wrapper(key: str, value: Tensor, model: nn.Module) -> tuple[str, Tensor]:
    owner_name, _, leaf = key.rpartition("pos_emb.emb.")
    if leaf == "weight" and not owner_name.endswith("rel_"):
        owner = model.get_submodule(owner_name.rstrip(".")) if owner_name else model
        if not getattr(owner, "l2norm_embed", False):
            value = value * value.shape[-1] ** -0.5  # x-transformers scales at lookup
        return key, value
    for pattern, replacement in WRAPPER_RULES:
        if re.search(pattern, key):
            return re.sub(pattern, replacement, key), value
    return key, value


def _apply(rules: list[tuple[str, str]], key: str) -> str | None:
    for pattern, replacement in rules:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def _dynamic_bias(key: str) -> str | None:
    """x-transformers' dynamic position bias MLP: (Linear, act[, norm]) groups, then a Linear;
    x_attn's is one flat Sequential of three modules per hidden layer."""
    found = re.match(r"^rel_pos\.mlp\.(\d+)\.(?:(0)\.)?(weight|bias)$", key)
    if found is None:
        return None
    index, _, leaf = found.groups()
    return f"positions.rel_pos.mlp.{3 * int(index)}.{leaf}"


def _polar_offsets(state: Mapping[str, Tensor], stacks: dict[str, AttentionLayers]) -> dict:
    """PoPE's key phase offsets: x-transformers learns one (h, 1, d) table for the stack,
    x_attn one (hk, d) table per self-attention layer; each layer gets a copy."""
    found = {}
    for prefix, stack in stacks.items():
        table = state.get(f"{prefix}polar_pos_emb.learned_bias")
        if table is None:
            continue
        for index, layer in enumerate(stack.layers):
            if getattr(layer.block, "polar", None) is not None:
                found[f"{prefix}layers.{index}.block.polar.phase_offset"] = table.squeeze(-2)
    return found


def _check_rotary_dim(stack: AttentionLayers, inv_freq: Tensor) -> None:
    rotary = getattr(stack.positions, "rotary", None)
    dim = 2 * inv_freq.numel()
    if rotary is None or rotary.dim != dim:
        have = "no rotary embedding" if rotary is None else f"rotary_emb_dim={rotary.dim}"
        raise ValueError(
            f"from_x_transformers: the checkpoint rotates {dim} dims per head, the x_attn "
            f"model has {have}; build it with rotary_pos_emb=True, rotary_emb_dim={dim}"
        )


def _rotary_rows(name: str, value: Tensor, stack: AttentionLayers) -> Tensor:
    """Query / key rows (and per-dim q / k parameters) in x_attn's half-split rotary layout."""
    rotary = getattr(stack.positions, "rotary", None)
    if rotary is None or stack.config.polar_pos_emb:  # PoPE's dims are not rotated in pairs
        return value
    order = _half_split_order(stack.config.attn.dim_head, rotary.dim)
    if re.search(r"block\.proj\.(inner\.)?to_[qk]\.weight$", name):
        return value.unflatten(0, (-1, len(order)))[:, order].flatten(0, 1)
    if re.search(PER_QK_DIM, name):
        return value[..., order]
    return value


def _half_split_order(dim_head: int, rotary_dim: int) -> Tensor:
    """x_attn's dim j holds x-transformers' dim order[j] (pair i: dims 2i, 2i + 1 -> i, i + r/2)."""
    half = rotary_dim // 2
    order = list(range(dim_head))
    for i in range(half):
        order[i], order[i + half] = 2 * i, 2 * i + 1
    return torch.tensor(order)


def _gain(name: str, value: Tensor, stack: AttentionLayers) -> Tensor:
    """x-transformers stores ``gain - 1`` for unconditioned stack norms and every layerscale."""
    conditioned = stack.config.dim_condition is not None or stack.config.norm.startswith("adapt")
    if name.endswith("layerscale.gamma"):
        return value + 1.0
    if GAINS.search(name) is None or conditioned:
        return value
    if name.endswith(".g") and value.shape == (1,):  # ScaleNorm: x_attn's gain holds sqrt(d)
        return (value.reshape(()) + 1.0) * math.sqrt(stack.config.dim)
    return value + 1.0


def _bias_only_in_x_attn(name: str) -> bool:
    """Biases x_attn has where x-transformers has none (norms, logits, projections): zero."""
    heads = ("norm", "to_logits", "project_in", "project_out")
    return name.endswith(".bias") and name.rsplit(".", 2)[-2].endswith(heads)
