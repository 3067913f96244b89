"""Which models the static decode path serves, and a ValueError naming the flag for the rest.

The static path (:mod:`x_attn.decode.static`) re-runs the layers of a plain decoder with
preallocated key/value buffers. It serves a ``TransformerWrapper`` around a causal stack of
(self-attention, feed-forward) blocks with pre-norm residuals, and exactly the options listed
below; every other flag that differs from its default is refused by name (never a silent
fallback to another path). Supported:

* stack: ``dim``, ``depth``, ``heads``, ``use_rmsnorm`` (norm ``"layernorm"`` / ``"rmsnorm"``),
  ``rotary_pos_emb`` with ``rotary_emb_dim``, ``rotary_base``, ``rotary_interleaved``,
  ``alibi_pos_bias``, ``rel_pos_bias`` (T5) with its buckets and distance;
* attention: ``attn_dim_head``, ``attn_kv_heads`` / ``attn_one_kv_head`` (GQA / MQA),
  ``attn_flash``, ``attn_dropout`` (off in eval);
* feed-forward: ``ff_mult``, ``ff_glu``, ``ff_swish``, ``ff_no_bias``, ``ff_dropout``;
* wrapper: ``num_tokens``, ``max_seq_len``, ``use_abs_pos_emb`` (learned table),
  ``emb_dropout``, ``tie_embedding``.
"""

from __future__ import annotations

import inspect
from dataclasses import fields
from typing import Any

from torch import nn

from x_attn.attention.attention import Attention
from x_attn.attention.features.attn_on_attn import LinearOutput
from x_attn.attention.projections.multihead import MultiHeadProjection
from x_attn.config import AttentionConfig, FeedForwardConfig, LayersConfig

OWNER = "static_cache=True"

STACK_OPTIONS = frozenset(
    "attn cross_attn ff dim depth heads causal norm rotary_pos_emb rotary_emb_dim rotary_base "
    "rotary_interleaved alibi_pos_bias rel_pos_bias rel_pos_num_buckets "
    "rel_pos_max_distance".split()
)
ATTN_OPTIONS = frozenset("dim_head kv_heads one_kv_head flash dropout".split())
FF_OPTIONS = frozenset("mult glu swish no_bias dropout".split())
WRAPPER_OPTIONS = frozenset(
    "num_tokens max_seq_len attn_layers use_abs_pos_emb emb_dropout tie_embedding".split()
)
NORMS = ("layernorm", "rmsnorm")


def _refuse(flag: str, why: str = "") -> ValueError:
    reason = f" ({why})" if why else ""
    return ValueError(
        f"{OWNER}: the static decode path does not serve {flag}{reason}; generate with "
        "static_cache=False (the ordinary KV cache), or drop that option"
    )


def _changed(config: Any, default: Any, allowed: frozenset[str], prefix: str) -> None:
    """Refuse the first field of ``config`` that differs from ``default`` and is not allowed."""
    for option in fields(config):
        if not option.init or option.name in allowed:
            continue
        value = getattr(config, option.name)
        if value != getattr(default, option.name):
            raise _refuse(f"{prefix}{option.name}={value!r}")


def check_stack(stack: nn.Module) -> None:
    """The stack's flags and built layers are the plain decoder's (see the module docstring)."""
    cfg: LayersConfig = stack.config
    if not cfg.causal:
        raise _refuse("a non-causal stack", "decoding needs causal self-attention: a Decoder")
    if cfg.norm not in NORMS:
        raise _refuse(f"norm={cfg.norm!r}", f"supported norms: {', '.join(NORMS)}")
    _changed(cfg, LayersConfig(dim=cfg.dim, depth=cfg.depth), STACK_OPTIONS, "")
    _changed(cfg.attn, AttentionConfig(), ATTN_OPTIONS, "attn_")
    _changed(cfg.ff, FeedForwardConfig(), FF_OPTIONS, "ff_")
    if cfg.ff.custom_activation is not None:  # compare=False on the dataclass field
        raise _refuse("ff_custom_activation")
    if stack.types != ("a", "f") * cfg.depth or stack.plan.order != tuple(range(2 * cfg.depth)):
        raise _refuse(f"the layer order {''.join(stack.types)!r}", "expects 'af' per block")
    for layer in stack.layers:
        _check_layer(layer)


def _check_layer(layer: nn.Module) -> None:
    """A layer built from the allowed flags has nothing beyond norm, block and residual."""
    extras = ("branch_norm", "post_norm", "layerscale", "shift", "residual_scale")
    present = [name for name in extras if getattr(layer, name) is not None]
    if present or layer.branch_scale != 1.0 or layer.residual_constant != 1.0:
        raise _refuse(f"the layer parts {present or ['branch scales']}")
    if type(layer.residual).__name__ != "Residual" or layer.residual.scale != 1.0:
        raise _refuse(f"the residual rule {type(layer.residual).__name__}")
    block = layer.block
    if not isinstance(block, Attention):
        return
    parts = {
        "value transforms": block.value_transforms,
        "key/value extensions": block.kv_extensions,
        "bias stages": block.bias_stages,
        "head stages": block.head_stages,
        "query/key head transforms": block.proj.head_transforms,
    }
    for name, stages in parts.items():
        if stages:
            raise _refuse(f"attention {name}")
    if type(block.proj) is not MultiHeadProjection or type(block.to_out) is not LinearOutput:
        raise _refuse(f"the projection {type(block.proj).__name__}")


def check_wrapper(net: nn.Module) -> None:
    """``net`` is a TransformerWrapper built only from the allowed options."""
    from x_attn.wrappers.token import TransformerWrapper

    if type(net) is not TransformerWrapper:
        raise _refuse(f"a {type(net).__name__}", "expects a TransformerWrapper")
    params = inspect.signature(TransformerWrapper.__init__).parameters
    for name, value in net._config_kwargs.items():
        if name in WRAPPER_OPTIONS or name not in params:
            continue
        if value != params[name].default:
            raise _refuse(f"{name}={value!r}")
    if net.pos_emb is not None and type(net.pos_emb).__name__ != "AbsolutePositionalEmbedding":
        raise _refuse(type(net.pos_emb).__name__)
    check_stack(net.attn_layers)


def check_generate_options(cache_kv: bool, kwargs: dict[str, Any]) -> None:
    """The generate() options the static path cannot take."""
    if not cache_kv:
        raise ValueError(
            f"{OWNER} decodes with preallocated key/value buffers, a KV cache; it cannot be "
            "combined with cache_kv=False"
        )
    if kwargs:
        raise _refuse(f"the model inputs {sorted(kwargs)}", "no context, prepend_embeds, mems")
