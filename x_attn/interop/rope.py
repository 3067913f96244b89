"""Hugging Face ``rope_parameters`` <-> x_attn rotary flags.

Hugging Face Llama-family models rotate every dim of each head in the half-split layout
(pairs ``(i, i + d/2)``), x_attn's default layout (``rotary_interleaved=False``), so the
rotary dim is the head dim. Scaling types:

* ``default``: plain RoPE with ``rope_theta`` as ``rotary_base``;
* ``linear``: position interpolation, ``factor`` as ``rotary_interpolation_factor``
  (frequencies / factor == positions / factor);
* ``llama3``: ``rotary_llama3_*``;
* ``yarn``: ``rotary_yarn_*`` (the attention factor from ``mscale`` / ``mscale_all_dim`` when
  given, as Hugging Face computes it); ``truncate=False`` is refused (x_attn rounds the
  correction range as the reference code does);
* anything else (``dynamic``, ``longrope``, ...) is refused naming the field.
"""

from __future__ import annotations

import math
from typing import Any

from x_attn.interop.common import refuse

_YARN_KEYS = {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow"}
_KNOWN = {
    "default": set(),
    "linear": {"factor"},
    "llama3": {
        "factor",
        "original_max_position_embeddings",
        "low_freq_factor",
        "high_freq_factor",
    },
    "yarn": _YARN_KEYS | {"attention_factor", "mscale", "mscale_all_dim", "truncate"},
}


def _mscale(factor: float, scale: float) -> float:
    return 1.0 if factor <= 1 else 0.1 * scale * math.log(factor) + 1.0


def rotary_flags(rope: dict[str, Any], family: str, max_positions: int) -> dict[str, Any]:
    """x_attn stack flags for ``rope_parameters``; ValueError naming an inexpressible key."""
    rope = dict(rope)
    kind = rope.pop("rope_type", "default")
    flags: dict[str, Any] = {"rotary_pos_emb": True, "rotary_base": float(rope.pop("rope_theta"))}
    if kind not in _KNOWN:
        raise refuse(
            family,
            "rope_parameters.rope_type",
            kind,
            f"x_attn's rotary embedding provides {sorted(_KNOWN)} (dynamic NTK recomputes the "
            "base from the current length, which x_attn does not provide)",
        )
    for key in sorted(set(rope) - _KNOWN[kind]):
        if rope[key] is not None and not (key == "partial_rotary_factor" and rope[key] == 1.0):
            raise refuse(family, f"rope_parameters.{key}", rope[key], f"not read by {kind} rope")
    if kind == "linear":
        flags["rotary_interpolation_factor"] = float(rope["factor"])
    elif kind == "llama3":
        flags["rotary_llama3_factor"] = float(rope["factor"])
        flags["rotary_llama3_original_max_len"] = int(rope["original_max_position_embeddings"])
        flags["rotary_llama3_low_freq_factor"] = float(rope["low_freq_factor"])
        flags["rotary_llama3_high_freq_factor"] = float(rope["high_freq_factor"])
    elif kind == "yarn":
        flags.update(_yarn_flags(rope, family, max_positions))
    return flags


def _yarn_flags(rope: dict[str, Any], family: str, max_positions: int) -> dict[str, Any]:
    if rope.get("truncate", True) is not True:
        raise refuse(
            family, "rope_parameters.truncate", rope["truncate"], "x_attn rounds the range"
        )
    original = int(rope["original_max_position_embeddings"])
    factor = rope.get("factor") or max_positions / original
    attention = rope.get("attention_factor")
    if attention is None and rope.get("mscale") and rope.get("mscale_all_dim"):
        attention = _mscale(factor, rope["mscale"]) / _mscale(factor, rope["mscale_all_dim"])
    flags = {
        "rotary_yarn_factor": float(factor),
        "rotary_yarn_original_max_len": original,
        "rotary_yarn_beta_fast": float(rope.get("beta_fast") or 32.0),
        "rotary_yarn_beta_slow": float(rope.get("beta_slow") or 1.0),
    }
    if attention is not None:
        flags["rotary_yarn_attn_factor"] = float(attention)
    return flags


def rope_parameters(layers: dict[str, Any]) -> dict[str, Any]:
    """The ``rope_parameters`` of Decoder flags (inverse of :func:`rotary_flags`)."""
    rope: dict[str, Any] = {"rope_theta": float(layers.get("rotary_base", 10000.0))}
    if layers.get("rotary_interpolation_factor", 1.0) != 1.0:
        return {**rope, "rope_type": "linear", "factor": layers["rotary_interpolation_factor"]}
    if layers.get("rotary_llama3_factor") is not None:
        return {
            **rope,
            "rope_type": "llama3",
            "factor": layers["rotary_llama3_factor"],
            "original_max_position_embeddings": layers["rotary_llama3_original_max_len"],
            "low_freq_factor": layers.get("rotary_llama3_low_freq_factor", 1.0),
            "high_freq_factor": layers.get("rotary_llama3_high_freq_factor", 4.0),
        }
    if layers.get("rotary_yarn_factor") is not None:
        yarn = {
            "rope_type": "yarn",
            "factor": layers["rotary_yarn_factor"],
            "original_max_position_embeddings": layers["rotary_yarn_original_max_len"],
            "beta_fast": layers.get("rotary_yarn_beta_fast", 32.0),
            "beta_slow": layers.get("rotary_yarn_beta_slow", 1.0),
        }
        if layers.get("rotary_yarn_attn_factor") is not None:
            yarn["attention_factor"] = layers["rotary_yarn_attn_factor"]
        return {**rope, **yarn}
    return {**rope, "rope_type": "default"}
