"""Shared pieces of the Hugging Face mappings: field accounting, refusals, building, checking.

A family mapping (:mod:`x_attn.interop.llama`, :mod:`x_attn.interop.gpt2`) turns a
``transformers`` config into x_attn flags (``wrapper`` flags for TransformerWrapper, ``layers``
flags for the Decoder) and back, and renames weights. The rules here keep it honest:

* every field of the Hugging Face config is either read by the mapping, listed in
  :data:`NO_EFFECT_FIELDS` (metadata that does not change the outputs), or at its default
  value; anything else is refused naming the field (:func:`refuse_unread_fields`);
* the way back (:func:`check_flags_match`) rebuilds the flags from the exported config and
  refuses the export when they differ from the model's own, naming the x_attn flag.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

import torch
from torch import nn

from x_attn.routing import route_layer_kwargs

# config fields that describe tokens, training set-up or bookkeeping, not the computed logits
NO_EFFECT_FIELDS = frozenset(
    {
        "_name_or_path",
        "architectures",
        "bos_token_id",
        "chunk_size_feed_forward",
        "dtype",
        "eos_token_id",
        "id2label",
        "initializer_range",
        "is_encoder_decoder",
        "label2id",
        "model_type",
        "output_attentions",
        "output_hidden_states",
        "pad_token_id",
        "problem_type",
        "return_dict",
        "transformers_version",
        "use_cache",
        "tie_encoder_decoder",
        "torch_dtype",
    }
)


def require_transformers() -> Any:
    """The ``transformers`` module, or an ImportError that says how to install it."""
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - exercised where transformers is absent
        raise ImportError(
            "x_attn.interop needs the Hugging Face libraries: pip install 'x_attn[hf]' "
            "(transformers and safetensors)"
        ) from error
    return transformers


def refuse(family: str, field: str, value: Any, why: str) -> ValueError:
    """The error for a config field (or value) x_attn cannot express."""
    return ValueError(f"from_hf: {family} config field {field!r}={value!r}: {why}")


def refuse_unread_fields(config: Any, read: set[str], family: str) -> None:
    """Refuse a config field the mapping does not read unless it is at its default value."""
    defaults = type(config)().to_dict()
    for name, value in config.to_dict().items():
        if name in read or name in NO_EFFECT_FIELDS:
            continue
        if value != defaults.get(name, None):
            raise refuse(
                family,
                name,
                value,
                "x_attn has no counterpart for this field at a non-default value, so the "
                "converted model would compute something else; convert a model without it",
            )


def ff_mult(hidden: int, inner: int, family: str, field: str) -> float:
    """A float ``m`` with ``int(hidden * m) == inner`` (x_attn sizes the feed-forward by it)."""
    mult = inner / hidden
    for candidate in (mult, float(torch.nextafter(torch.tensor(mult), torch.tensor(2 * mult)))):
        if int(hidden * candidate) == inner:
            return candidate
    raise refuse(family, field, inner, f"no ff_mult gives int({hidden} * ff_mult) == {inner}")


def build_model(wrapper: dict[str, Any], layers: dict[str, Any]) -> nn.Module:
    """TransformerWrapper(**wrapper, attn_layers=Decoder(**layers)) in eval mode."""
    from x_attn import Decoder, TransformerWrapper

    return TransformerWrapper(**wrapper, attn_layers=Decoder(**layers)).eval()


def model_flags(model: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    """(wrapper flags, Decoder flags) a TransformerWrapper of a Decoder was built with."""
    from x_attn import Decoder, TransformerWrapper

    if not isinstance(model, TransformerWrapper) or not isinstance(model.attn_layers, Decoder):
        raise TypeError(
            "to_hf: expected a TransformerWrapper around a Decoder (a decoder-only language "
            f"model), got {type(model).__name__}"
        )
    wrapper = {k: v for k, v in model._config_kwargs.items() if k != "attn_layers"}
    return wrapper, dict(model.attn_layers._config_kwargs)


def check_flags_match(model: nn.Module, wrapper: dict[str, Any], layers: dict[str, Any]) -> None:
    """Refuse an export whose config would rebuild other flags than the model's, naming them."""
    own_wrapper, _ = model_flags(model)
    theirs = route_layer_kwargs("Decoder", {**layers, "causal": True})
    differ = _differences(model.attn_layers.config, theirs, "")
    for key in sorted((set(own_wrapper) | set(wrapper)) - {"logits_bias"}):  # check_logits_bias
        if _wrapper_value(model, own_wrapper, key) != _wrapper_value(model, wrapper, key):
            differ.append(f"{key}={own_wrapper.get(key)!r}")
    if differ:
        raise ValueError(
            f"to_hf: the model's {', '.join(differ)} has no counterpart in the Hugging Face "
            "architecture it maps to (the exported model would compute something else)"
        )


def _differences(ours: Any, theirs: Any, prefix: str) -> list[str]:
    """``flag=value`` of every config field where ``ours`` differs from ``theirs``."""
    differ = []
    for item in fields(ours):
        mine, other = getattr(ours, item.name), getattr(theirs, item.name)
        if is_dataclass(mine):
            differ += _differences(mine, other, _PREFIXES.get(item.name, prefix))
        elif item.compare and mine != other:
            differ.append(f"{prefix}{item.name}={mine!r}")
    return differ


_PREFIXES = {"attn": "attn_", "cross_attn": "cross_attn_", "ff": "ff_"}


def _wrapper_value(model: nn.Module, flags: dict[str, Any], key: str) -> Any:
    """A TransformerWrapper flag's value, its constructor default when not given."""
    import inspect

    from x_attn import TransformerWrapper

    if key in flags:
        return flags[key]
    parameter = inspect.signature(TransformerWrapper.__init__).parameters.get(key)
    return None if parameter is None else parameter.default


def load_exact(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``module`` with every key matched (names the ones that are not)."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("inv_freq")]
    if missing or unexpected:
        raise ValueError(
            f"{what}: weights do not match the architecture (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]})"
        )


def check_logits_bias(model: nn.Module) -> None:
    """Refuse exporting a non-zero head bias (Hugging Face causal LM heads have none)."""
    bias = getattr(model.to_logits, "bias", None)
    if bias is not None and bool(bias.detach().ne(0).any()):
        raise ValueError(
            "to_hf: to_logits.bias is non-zero, but Hugging Face language-model heads have no "
            "bias; the exported model would compute other logits"
        )
