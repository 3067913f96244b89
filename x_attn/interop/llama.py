"""Llama, Qwen2 and Mistral (Hugging Face) <-> x_attn.

All three are pre-norm decoders with RMSNorm (``x * rsqrt(mean(x^2) + eps) * g``: x_attn's
``use_rmsnorm`` with ``norm_eps``), rotary positions on the whole head in the half-split
layout, grouped-query attention (``attn_kv_heads``) and a SwiGLU feed-forward
(``down(silu(gate(x)) * up(x))``: ``ff_glu`` + ``ff_swish``, x_attn's ``proj_in`` holding
``[up; gate]``). They differ in biases and windows:

* Llama: ``attention_bias`` (q/k/v and output: ``attn_qkv_bias`` + ``attn_out_bias``) and
  ``mlp_bias`` (``ff_no_bias=False``);
* Qwen2: biases on q/k/v only (``attn_qkv_bias``); its per-layer sliding windows
  (``use_sliding_window`` with ``max_window_layers``) are refused;
* Mistral: no biases; ``sliding_window`` w becomes ``attn_window_size=w`` (each query sees
  itself and the w - 1 keys before it, Hugging Face's convention and x_attn's; decoding keeps a
  ring buffer of the last w - 1 keys); a window covering every position is full attention.

Per-family differences are :class:`Family` entries; the weights are renamed by
:func:`to_x_state` / :func:`to_hf_state`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from x_attn.interop.common import ff_mult, refuse, refuse_unread_fields
from x_attn.interop.rope import rope_parameters, rotary_flags

_READ = {
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "tie_word_embeddings",
    "rope_parameters",
    "attention_dropout",
}


@dataclass(frozen=True)
class Family:
    """One Hugging Face architecture of the Llama kind.

    Attributes:
        name: the config's ``model_type``.
        config_class / model_class: the ``transformers`` class names.
        extra_fields: config fields this family reads besides the shared ones.
    """

    name: str
    config_class: str
    model_class: str
    extra_fields: frozenset[str]

    def biases(self, config: Any) -> dict[str, bool]:
        """The bias flags of ``config``."""
        if self.name == "llama":
            attn, mlp = bool(config.attention_bias), bool(config.mlp_bias)
            return {"attn_qkv_bias": attn, "attn_out_bias": attn, "ff_no_bias": not mlp}
        return {"attn_qkv_bias": self.name == "qwen2", "ff_no_bias": True}

    def window(self, config: Any) -> int | None:
        """The ``attn_window_size`` of ``config`` (None: full attention)."""
        window = getattr(config, "sliding_window", None)
        if self.name == "qwen2":
            if config.use_sliding_window:
                raise refuse(self.name, "use_sliding_window", True, _PER_LAYER_WINDOWS)
            return None
        if window is None or window >= config.max_position_embeddings:
            return None  # it hides no key
        return int(window)


_PER_LAYER_WINDOWS = (
    "Qwen2 windows only the layers from max_window_layers on; this mapping does not build "
    "per-layer windows yet"
)

FAMILIES = {
    "llama": Family(
        "llama",
        "LlamaConfig",
        "LlamaForCausalLM",
        frozenset({"attention_bias", "mlp_bias", "pretraining_tp"}),
    ),
    "qwen2": Family(
        "qwen2",
        "Qwen2Config",
        "Qwen2ForCausalLM",
        frozenset({"use_sliding_window", "sliding_window", "max_window_layers", "layer_types"}),
    ),
    "mistral": Family(
        "mistral", "MistralConfig", "MistralForCausalLM", frozenset({"sliding_window"})
    ),
}


def flags(config: Any, family: Family) -> tuple[dict[str, Any], dict[str, Any]]:
    """(TransformerWrapper flags, Decoder flags) equivalent to a Hugging Face config."""
    refuse_unread_fields(config, _READ | family.extra_fields, family.name)
    if config.hidden_act != "silu":
        raise refuse(family.name, "hidden_act", config.hidden_act, "x_attn's GLU needs 'silu'")
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = config.num_key_value_heads or heads
    layers: dict[str, Any] = {
        "dim": config.hidden_size,
        "depth": config.num_hidden_layers,
        "heads": heads,
        "attn_dim_head": head_dim,
        "attn_kv_heads": kv_heads if kv_heads != heads else None,
        "use_rmsnorm": True,
        "norm_eps": float(config.rms_norm_eps),
        "ff_glu": True,
        "ff_swish": True,
        "ff_mult": ff_mult(
            config.hidden_size, config.intermediate_size, family.name, "intermediate_size"
        ),
        "rotary_emb_dim": head_dim,
        **rotary_flags(config.rope_parameters, family.name, config.max_position_embeddings),
        **family.biases(config),
        "attn_window_size": family.window(config),
    }
    if config.attention_dropout:
        layers["attn_dropout"] = float(config.attention_dropout)
    layers = {k: v for k, v in layers.items() if v is not None}
    return _wrapper_flags(config), layers


def _wrapper_flags(config: Any) -> dict[str, Any]:
    wrapper: dict[str, Any] = {
        "num_tokens": config.vocab_size,
        "max_seq_len": config.max_position_embeddings,
        "use_abs_pos_emb": False,
    }
    if config.tie_word_embeddings:
        wrapper.update(tie_embedding=True, tie_embedding_scale=1.0)
    else:
        wrapper["logits_bias"] = False  # Hugging Face language-model heads have no bias
    return wrapper


def config_kwargs(
    wrapper: dict[str, Any], layers: dict[str, Any], family: Family
) -> dict[str, Any]:
    """Hugging Face config keywords for x_attn flags (checked afterwards by the caller)."""
    dim, heads = layers["dim"], layers.get("heads", 8)
    head_dim = layers.get("attn_dim_head", 64)
    kwargs: dict[str, Any] = {
        "vocab_size": wrapper["num_tokens"],
        "hidden_size": dim,
        "intermediate_size": int(dim * layers.get("ff_mult", 4)),
        "num_hidden_layers": layers["depth"],
        "num_attention_heads": heads,
        "num_key_value_heads": layers.get("attn_kv_heads") or heads,
        "max_position_embeddings": wrapper["max_seq_len"],
        "rms_norm_eps": layers.get("norm_eps", 1e-8),
        "tie_word_embeddings": bool(wrapper.get("tie_embedding", False)),
        "rope_parameters": rope_parameters(layers),
        "attention_dropout": layers.get("attn_dropout", 0.0),
        "hidden_act": "silu",
    }
    if family.name != "qwen2":
        kwargs["head_dim"] = head_dim
    if family.name == "llama":
        kwargs["attention_bias"] = bool(layers.get("attn_qkv_bias", False))
        kwargs["mlp_bias"] = not layers.get("ff_no_bias", False)
    if family.name == "mistral":
        kwargs["sliding_window"] = layers.get("attn_window_size")
    return kwargs


def _layer_names(i: int) -> dict[str, str]:
    """x_attn name -> Hugging Face name for the weights of decoder layer ``i``."""
    a, f, hf = f"attn_layers.layers.{2 * i}", f"attn_layers.layers.{2 * i + 1}", f"model.layers.{i}"
    names = {
        f"{a}.norm.g": f"{hf}.input_layernorm.weight",
        f"{f}.norm.g": f"{hf}.post_attention_layernorm.weight",
    }
    for x, h in (("q", "q"), ("k", "k"), ("v", "v")):
        for kind in ("weight", "bias"):
            names[f"{a}.block.proj.to_{x}.{kind}"] = f"{hf}.self_attn.{h}_proj.{kind}"
    for kind in ("weight", "bias"):
        names[f"{a}.block.to_out.{kind}"] = f"{hf}.self_attn.o_proj.{kind}"
        names[f"{f}.block.proj_out.{kind}"] = f"{hf}.mlp.down_proj.{kind}"
    return names


def _fixed_names() -> dict[str, str]:
    return {
        "token_emb.weight": "model.embed_tokens.weight",
        "attn_layers.final_norm.g": "model.norm.weight",
        "to_logits.weight": "lm_head.weight",
    }


def to_x_state(hf: dict[str, Tensor], depth: int, tied: bool) -> dict[str, Tensor]:
    """Hugging Face weights -> x_attn weights (``proj_in`` = [up; gate])."""
    names = _fixed_names()
    out = {x: hf[h] for x, h in names.items() if h in hf and not (tied and x == "to_logits.weight")}
    for i in range(depth):
        out.update({x: hf[h] for x, h in _layer_names(i).items() if h in hf})
        mlp, f = f"model.layers.{i}.mlp", f"attn_layers.layers.{2 * i + 1}.block.proj_in"
        for kind in ("weight", "bias"):
            if f"{mlp}.up_proj.{kind}" in hf:
                up, gate = hf[f"{mlp}.up_proj.{kind}"], hf[f"{mlp}.gate_proj.{kind}"]
                out[f"{f}.{kind}"] = torch.cat((up, gate), dim=0)
    return out


def to_hf_state(x: dict[str, Tensor], depth: int, tied: bool) -> dict[str, Tensor]:
    """x_attn weights -> Hugging Face weights (``proj_in`` split into up and gate)."""
    names = _fixed_names()
    out = {h: x[n] for n, h in names.items() if n in x}
    if tied:
        out["lm_head.weight"] = x["token_emb.weight"]
    for i in range(depth):
        out.update({h: x[n] for n, h in _layer_names(i).items() if n in x})
        mlp, f = f"model.layers.{i}.mlp", f"attn_layers.layers.{2 * i + 1}.block.proj_in"
        for kind in ("weight", "bias"):
            if f"{f}.{kind}" in x:
                up, gate = x[f"{f}.{kind}"].chunk(2, dim=0)
                out[f"{mlp}.up_proj.{kind}"], out[f"{mlp}.gate_proj.{kind}"] = up, gate
    return out
