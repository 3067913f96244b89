"""Hugging Face checkpoints <-> x_attn models (needs the ``hf`` extra: transformers, safetensors).

``from_hf(model_or_path)`` returns a :class:`x_attn.TransformerWrapper` around a
:class:`x_attn.Decoder` built from ordinary x_attn flags, with the checkpoint's weights, in eval
mode; ``x_attn.to_config(model)`` prints the flags it chose (and rebuilds the model from
them). ``to_hf(model)`` is the reverse. Families: GPT-2, Llama, Qwen2, Mistral. A config field
or value x_attn cannot express is refused with a ValueError naming it.

``from_x_transformers(source, model)`` loads an x-transformers model or state_dict into the
x_attn model built with the same flags (:mod:`x_attn.interop.x_transformers`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from x_attn.interop import gpt2, llama
from x_attn.interop.common import (
    build_model,
    check_flags_match,
    check_logits_bias,
    load_exact,
    model_flags,
    require_transformers,
)
from x_attn.interop.x_transformers import from_x_transformers

__all__ = ["FAMILIES", "from_hf", "from_x_transformers", "to_hf"]

FAMILIES = (*llama.FAMILIES, "gpt2")


def _hf_model(model_or_path: Any) -> nn.Module:
    """A Hugging Face causal LM: the given one, or loaded offline from a local directory."""
    transformers = require_transformers()
    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        if not path.is_dir():
            raise ValueError(
                f"from_hf: {str(model_or_path)!r} is not a local directory; x_attn loads saved "
                "checkpoints offline (save_pretrained / a downloaded snapshot folder)"
            )
        return transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    if not isinstance(model_or_path, transformers.PreTrainedModel):
        raise TypeError(
            "from_hf: expected a transformers PreTrainedModel or a local directory, got "
            f"{type(model_or_path).__name__}"
        )
    return model_or_path


def _model_type(config: Any) -> str:
    kind = getattr(config, "model_type", None)
    if kind not in FAMILIES:
        raise ValueError(f"from_hf: model_type {kind!r} is not supported; supported: {FAMILIES}")
    return kind


def from_hf(model_or_path: Any) -> nn.Module:
    """An x_attn TransformerWrapper computing what the Hugging Face causal LM computes.

    Args:
        model_or_path: a ``transformers`` causal LM (GPT-2, Llama, Qwen2, Mistral), or a local
            directory it was saved to (``save_pretrained``; safetensors weights; no network).

    Returns:
        The x_attn model in eval mode, in the dtype of the Hugging Face weights.

    Raises:
        ValueError: a config field or value x_attn cannot express (named).
    """
    hf = _hf_model(model_or_path)
    config = hf.config
    kind = _model_type(config)
    state = {k: v.detach() for k, v in hf.state_dict().items()}
    tied = bool(config.tie_word_embeddings)
    if kind == "gpt2":
        wrapper, layers = gpt2.flags(config)
        x_state = gpt2.to_x_state(state, config.n_layer, tied)
    else:
        wrapper, layers = llama.flags(config, llama.FAMILIES[kind])
        x_state = llama.to_x_state(state, config.num_hidden_layers, tied)
    dtype = next(iter(state.values())).dtype
    model = build_model(wrapper, layers).to(dtype)
    load_exact(model, x_state, f"from_hf ({kind})")
    return model


def to_hf(model: nn.Module, family: str | None = None) -> nn.Module:
    """A Hugging Face causal LM computing what the x_attn model computes.

    Args:
        model: a TransformerWrapper around a Decoder whose flags one family expresses.
        family: "gpt2", "llama", "qwen2" or "mistral"; None picks from the flags (learned
            absolute positions: gpt2; a sliding window: mistral; q/k/v biases without an output
            bias: qwen2; else llama).

    Raises:
        ValueError: a flag (or a non-zero head bias) the family cannot express (named).
    """
    transformers = require_transformers()
    wrapper, layers = model_flags(model)
    family = family or _pick_family(wrapper, layers)
    if family not in FAMILIES:
        raise ValueError(f"to_hf: family {family!r} is not one of {FAMILIES}")
    check_logits_bias(model)
    state = model.state_dict()
    tied = bool(wrapper.get("tie_embedding", False))
    if family == "gpt2":
        config = transformers.GPT2Config(**gpt2.config_kwargs(wrapper, layers))
        rebuilt = gpt2.flags(config)
        hf_state = gpt2.to_hf_state(state, config.n_layer, tied)
        cls = transformers.GPT2LMHeadModel
    else:
        spec = llama.FAMILIES[family]
        config = getattr(transformers, spec.config_class)(
            **llama.config_kwargs(wrapper, layers, spec)
        )
        rebuilt = llama.flags(config, spec)
        hf_state = llama.to_hf_state(state, config.num_hidden_layers, tied)
        cls = getattr(transformers, spec.model_class)
    check_flags_match(model, *rebuilt)
    dtype = next(iter(state.values())).dtype
    hf = cls(config).to(dtype)
    load_exact(hf, hf_state, f"to_hf ({family})")
    if tied:
        hf.tie_weights()
    return hf.eval()


def _pick_family(wrapper: dict[str, Any], layers: dict[str, Any]) -> str:
    if wrapper.get("use_abs_pos_emb", True) and not layers.get("rotary_pos_emb", False):
        return "gpt2"
    if layers.get("attn_window_size"):
        return "mistral"
    if layers.get("attn_qkv_bias") and not layers.get("attn_out_bias"):
        return "qwen2"
    return "llama"
