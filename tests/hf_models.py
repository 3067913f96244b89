"""Tiny randomly initialised Hugging Face causal LMs, built locally (no download).

Hugging Face initialises biases at zero and norm gains at one; :func:`tiny_hf` redraws every
parameter (gains around one) so that a mapping that drops a bias or a gain is caught.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="the interop tests need transformers (pip install 'x_attn[hf]')"
)

VOCAB = 61
ROPE = {"rope_theta": 500.0, "rope_type": "default"}
_SHARED = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 88,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 96,
    "rms_norm_eps": 1e-5,
    "rope_parameters": ROPE,
    "bos_token_id": 0,
    "eos_token_id": 0,
}
CONFIGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {**_SHARED, "attention_bias": True}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(_SHARED)),
    "mistral": ("MistralConfig", "MistralForCausalLM", {**_SHARED, "sliding_window": None}),
    "gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        {
            "vocab_size": VOCAB,
            "n_embd": 32,
            "n_layer": 2,
            "n_head": 4,
            "n_positions": 96,
            "resid_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "bos_token_id": 0,
            "eos_token_id": 0,
        },
    ),
}
FAMILIES = tuple(CONFIGS)


def hf_config(family: str, **overrides: Any) -> Any:
    config_class, _, kwargs = CONFIGS[family]
    return getattr(transformers, config_class)(**{**kwargs, **overrides})


def tiny_hf(family: str, seed: int = 0, **overrides: Any) -> Any:
    """A tiny Hugging Face model of ``family`` with every parameter drawn at random."""
    torch.manual_seed(seed)
    model = getattr(transformers, CONFIGS[family][1])(hf_config(family, **overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = name.endswith(("norm.weight", "ln_1.weight", "ln_2.weight", "ln_f.weight"))
            p.copy_(1 + 0.1 * torch.randn_like(p) if gain else 0.15 * torch.randn_like(p))
    return model.eval()


def float64_internals(model: Any, base: float) -> None:
    """Replace the float32 steps of a float64 Llama-family model by float64 ones.

    Hugging Face computes the rotary ``inv_freq`` and angles, and the RMSNorm, in float32 even
    in a float64 model, so a 1e-9 comparison needs them in float64, by the same formulas
    (written here, not taken from x_attn): ``theta_i = base ** (-2i / d)``, angles
    ``p * theta_i`` in the half-split layout (each angle twice); ``x * rsqrt(mean(x^2) + eps)
    * g``.
    """
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = _float64_rms(module)
    rotary = model.model.rotary_emb
    dim = model.config.head_dim if hasattr(model.config, "head_dim") else None
    dim = dim or model.config.hidden_size // model.config.num_attention_heads

    def forward(x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        theta = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        angles = position_ids[..., None].double() * theta
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)

    rotary.forward = forward


def _float64_rms(norm: Any) -> Any:
    def forward(x: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        return norm.weight * (x * scale)

    return forward


def hf_generate(model: Any, ids: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy generation with the KV cache: the ``steps`` new tokens of each row."""
    out = model.generate(
        input_ids=ids,
        attention_mask=mask.long(),
        max_new_tokens=steps,
        min_new_tokens=steps,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
        eos_token_id=None,
    )
    return out[:, ids.shape[1] :]


def left_pad(prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, p) left-padded ids (pad 0) and the mask (True = real token)."""
    width = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat((p.new_zeros(width - len(p)), p)) for p in prompts])
    mask = torch.stack([torch.arange(width) >= width - len(p) for p in prompts])
    return ids, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Hugging Face positions of a left-padded batch: real tokens count from 0."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)
