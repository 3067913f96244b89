"""GPT-2 (Hugging Face) <-> x_attn.

GPT-2 (Radford et al., 2019): pre-norm LayerNorm (with bias, ``layer_norm_epsilon`` as
``norm_eps``), learned absolute positions (x_attn's default ``pos_emb``, unscaled), fused
q/k/v in one ``Conv1D`` (weights stored (in, out): transposed against ``nn.Linear``) with
biases (``attn_qkv_bias``), an output projection with bias (``attn_out_bias``), a plain
feed-forward with biases and the ``gelu_new`` activation: GELU's tanh approximation
``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))``, which is torch's
``nn.GELU(approximate="tanh")`` (``ff_custom_activation``); the logits reuse the token
embedding (``tie_embedding`` with ``tie_embedding_scale=1.0``).

Dropouts: ``attn_pdrop`` -> ``attn_dropout``, ``embd_pdrop`` -> ``emb_dropout``;
``resid_pdrop`` (dropout on both branch outputs) has no x_attn counterpart and acts only in
training mode: a non-zero value is reported by a warning, naming it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from x_attn.interop.common import ff_mult, refuse, refuse_unread_fields

FAMILY = "gpt2"
_READ = {
    "vocab_size",
    "n_positions",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "activation_function",
    "layer_norm_epsilon",
    "tie_word_embeddings",
    "attn_pdrop",
    "embd_pdrop",
    "resid_pdrop",
    "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx",
    "add_cross_attention",
    "reorder_and_upcast_attn",  # float32 softmax in half precision: precision, not maths
    # the sequence-summary head of GPT2DoubleHeadsModel, not part of the language model
    "summary_type",
    "summary_use_proj",
    "summary_activation",
    "summary_proj_to_labels",
    "summary_first_dropout",
}
# Hugging Face activation name -> feed-forward flags
_ACTIVATIONS: dict[str, dict[str, Any]] = {
    "gelu": {},
    "gelu_new": {"ff_custom_activation": nn.GELU(approximate="tanh")},
    "gelu_pytorch_tanh": {"ff_custom_activation": nn.GELU(approximate="tanh")},
    "relu": {"ff_custom_activation": nn.ReLU()},
    "silu": {"ff_swish": True},
}


def _check_attention(config: Any) -> None:
    for field, wanted in (
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("add_cross_attention", False),
    ):
        if bool(getattr(config, field)) != wanted:
            raise refuse(FAMILY, field, getattr(config, field), f"x_attn supports {wanted} only")
    if config.resid_pdrop:
        warnings.warn(
            f"from_hf: gpt2 config field 'resid_pdrop'={config.resid_pdrop} (dropout on the "
            "branch outputs, training only) has no x_attn counterpart; the converted model "
            "has none (eval mode: same outputs)",
            stacklevel=3,
        )


def flags(config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(TransformerWrapper flags, Decoder flags) equivalent to a GPT2Config."""
    refuse_unread_fields(config, _READ, FAMILY)
    _check_attention(config)
    act = config.activation_function
    if act not in _ACTIVATIONS:
        raise refuse(FAMILY, "activation_function", act, f"x_attn maps {sorted(_ACTIVATIONS)}")
    dim, heads = config.n_embd, config.n_head
    inner = config.n_inner or 4 * dim
    layers: dict[str, Any] = {
        "dim": dim,
        "depth": config.n_layer,
        "heads": heads,
        "attn_dim_head": dim // heads,
        "norm_eps": float(config.layer_norm_epsilon),
        "attn_qkv_bias": True,
        "attn_out_bias": True,
        "ff_mult": ff_mult(dim, inner, FAMILY, "n_inner"),
        **_ACTIVATIONS[act],
    }
    if config.attn_pdrop:
        layers["attn_dropout"] = float(config.attn_pdrop)
    wrapper: dict[str, Any] = {"num_tokens": config.vocab_size, "max_seq_len": config.n_positions}
    if config.embd_pdrop:
        wrapper["emb_dropout"] = float(config.embd_pdrop)
    if config.tie_word_embeddings:
        wrapper.update(tie_embedding=True, tie_embedding_scale=1.0)
    else:
        wrapper["logits_bias"] = False  # Hugging Face language-model heads have no bias
    return wrapper, layers


def config_kwargs(wrapper: dict[str, Any], layers: dict[str, Any]) -> dict[str, Any]:
    """GPT2Config keywords for x_attn flags (checked afterwards by the caller)."""
    dim = layers["dim"]
    activation = layers.get("ff_custom_activation")
    act = "gelu"
    if layers.get("ff_swish"):
        act = "silu"
    elif isinstance(activation, nn.GELU) and activation.approximate == "tanh":
        act = "gelu_new"
    elif isinstance(activation, nn.ReLU):
        act = "relu"
    return {
        "vocab_size": wrapper["num_tokens"],
        "n_positions": wrapper["max_seq_len"],
        "n_embd": dim,
        "n_layer": layers["depth"],
        "n_head": layers.get("heads", 8),
        "n_inner": int(dim * layers.get("ff_mult", 4)),
        "activation_function": act,
        "layer_norm_epsilon": layers.get("norm_eps", 1e-5),
        "tie_word_embeddings": bool(wrapper.get("tie_embedding", False)),
        "attn_pdrop": layers.get("attn_dropout", 0.0),
        "embd_pdrop": wrapper.get("emb_dropout", 0.0),
        "resid_pdrop": 0.0,
    }


def _pairs(i: int) -> list[tuple[str, str, bool]]:
    """(x_attn name, Hugging Face name, transposed) of the weights of block ``i``, unfused."""
    a, f, h = f"attn_layers.layers.{2 * i}", f"attn_layers.layers.{2 * i + 1}", f"transformer.h.{i}"
    pairs = []
    for kind in ("weight", "bias"):
        pairs += [
            (f"{a}.norm.{kind}", f"{h}.ln_1.{kind}", False),
            (f"{a}.block.to_out.{kind}", f"{h}.attn.c_proj.{kind}", kind == "weight"),
            (f"{f}.norm.{kind}", f"{h}.ln_2.{kind}", False),
            (f"{f}.block.proj_in.{kind}", f"{h}.mlp.c_fc.{kind}", kind == "weight"),
            (f"{f}.block.proj_out.{kind}", f"{h}.mlp.c_proj.{kind}", kind == "weight"),
        ]
    return pairs


_FIXED = [
    ("token_emb.weight", "transformer.wte.weight", False),
    ("pos_emb.emb.weight", "transformer.wpe.weight", False),
    ("attn_layers.final_norm.weight", "transformer.ln_f.weight", False),
    ("attn_layers.final_norm.bias", "transformer.ln_f.bias", False),
    ("to_logits.weight", "lm_head.weight", False),
]


def _qkv(i: int) -> tuple[str, str]:
    return f"attn_layers.layers.{2 * i}.block.proj", f"transformer.h.{i}.attn.c_attn"


def to_x_state(hf: dict[str, Tensor], depth: int, tied: bool) -> dict[str, Tensor]:
    """Hugging Face weights -> x_attn weights (Conv1D transposed, fused q/k/v split)."""
    pairs = [p for p in _FIXED if not (tied and p[0] == "to_logits.weight")]
    out = {}
    for i in range(depth):
        pairs += _pairs(i)
        proj, fused = _qkv(i)
        q, k, v = hf[f"{fused}.weight"].t().chunk(3, dim=0)
        out.update({f"{proj}.to_q.weight": q, f"{proj}.to_k.weight": k, f"{proj}.to_v.weight": v})
        q, k, v = hf[f"{fused}.bias"].chunk(3, dim=0)
        out.update({f"{proj}.to_q.bias": q, f"{proj}.to_k.bias": k, f"{proj}.to_v.bias": v})
    for x, h, transposed in pairs:
        out[x] = hf[h].t() if transposed else hf[h]
    return {k: v.contiguous() for k, v in out.items()}


def to_hf_state(x: dict[str, Tensor], depth: int, tied: bool) -> dict[str, Tensor]:
    """x_attn weights -> Hugging Face weights (the reverse of :func:`to_x_state`)."""
    pairs = [p for p in _FIXED if not (tied and p[0] == "to_logits.weight")]
    out = {"lm_head.weight": x["token_emb.weight"]} if tied else {}
    for i in range(depth):
        pairs += _pairs(i)
        proj, fused = _qkv(i)
        names = [f"{proj}.to_{n}" for n in "qkv"]
        out[f"{fused}.weight"] = torch.cat([x[f"{n}.weight"] for n in names], dim=0).t()
        out[f"{fused}.bias"] = torch.cat([x[f"{n}.bias"] for n in names], dim=0)
    for name, h, transposed in pairs:
        out[h] = x[name].t() if transposed else x[name]
    return {k: v.contiguous() for k, v in out.items()}
