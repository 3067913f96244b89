"""Conversion rules: exact round trips, the flags chosen, rope scaling, refused fields.

* x_attn -> Hugging Face -> x_attn returns the same flags and bit-identical weights;
* the chosen flags are ordinary x_attn flags: ``to_config`` -> JSON -> ``from_config`` with
  the state dict computes the same logits;
* rope scaling types (linear, llama3, YaRN) match Hugging Face's rotary (float32, 1e-4);
  dynamic NTK is refused naming the field;
* a config field or value x_attn cannot express is refused naming it, and so is an export
  of a model whose flags the family cannot express.

Shape legend: b batch, n sequence.
"""

from __future__ import annotations

import json

import pytest
import torch
from hf_models import VOCAB, hf_config, tiny_hf, transformers

import x_attn
from x_attn import Decoder, TransformerWrapper
from x_attn.interop import from_hf, to_hf

LLAMA_FLAGS = {
    "dim": 32,
    "depth": 2,
    "heads": 4,
    "attn_dim_head": 8,
    "attn_kv_heads": 2,
    "use_rmsnorm": True,
    "norm_eps": 1e-6,
    "ff_glu": True,
    "ff_swish": True,
    "ff_no_bias": True,
    "ff_mult": 2.75,
    "rotary_pos_emb": True,
    "rotary_emb_dim": 8,
    "rotary_base": 1000.0,
}
GPT2_FLAGS = {
    "dim": 32,
    "depth": 2,
    "heads": 4,
    "attn_dim_head": 8,
    "attn_qkv_bias": True,
    "attn_out_bias": True,
    "norm_eps": 1e-5,
    "ff_custom_activation": torch.nn.GELU(approximate="tanh"),
}


def x_model(layers: dict, **wrapper) -> TransformerWrapper:
    torch.manual_seed(3)
    model = TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=64, attn_layers=Decoder(**layers), **wrapper
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        if getattr(model.to_logits, "bias", None) is not None:
            model.to_logits.bias.zero_()
    return model.eval()


HF_HEAD = {"use_abs_pos_emb": False, "logits_bias": False}  # Hugging Face heads have no bias
CASES = {
    "llama": (LLAMA_FLAGS, HF_HEAD),
    "llama_tied_biased": (
        {**LLAMA_FLAGS, "attn_qkv_bias": True, "attn_out_bias": True, "ff_no_bias": False},
        {"use_abs_pos_emb": False, "tie_embedding": True, "tie_embedding_scale": 1.0},
    ),
    "qwen2": ({**LLAMA_FLAGS, "attn_qkv_bias": True}, HF_HEAD),
    "mistral": ({**LLAMA_FLAGS, "attn_window_size": 6}, HF_HEAD),
    "gpt2": (GPT2_FLAGS, {"tie_embedding": True, "tie_embedding_scale": 1.0}),
}


@pytest.mark.parametrize("case", CASES)
def test_round_trip_is_exact(case):
    layers, wrapper = CASES[case]
    model = x_model(layers, **wrapper)
    back = from_hf(to_hf(model))
    assert back.attn_layers.config == model.attn_layers.config  # the same flags, as routed
    assert x_attn.to_config(from_hf(to_hf(back))) == x_attn.to_config(back)
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_chosen_flags_rebuild_through_to_config(family):
    model = from_hf(tiny_hf(family))
    config = json.loads(json.dumps(x_attn.to_config(model)))
    rebuilt = x_attn.from_config(config).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randint(0, VOCAB, (1, 10))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


ROPE_SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "original_max_position_embeddings": 32,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 24},
    "yarn_mscale": {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 24,
        "mscale": 0.8,
        "mscale_all_dim": 0.5,
        "beta_fast": 16.0,
    },
}


@pytest.mark.parametrize("kind", ROPE_SCALINGS)
def test_rope_scaling_matches(kind):
    rope = {"rope_theta": 500.0, **ROPE_SCALINGS[kind]}
    hf = tiny_hf("llama", rope_parameters=rope)
    model = from_hf(hf)
    x = torch.randint(0, VOCAB, (1, 90), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-4, rtol=0)
    back = to_hf(model)
    assert back.config.rope_parameters["rope_type"] == rope["rope_type"]


REFUSED = {
    "hidden_act": ("llama", {"hidden_act": "gelu"}),
    "rope_parameters.rope_type": (
        "llama",
        {"rope_parameters": {"rope_theta": 500.0, "rope_type": "dynamic", "factor": 2.0}},
    ),
    "rope_parameters.truncate": (
        "llama",
        {
            "rope_parameters": {
                "rope_theta": 500.0,
                "rope_type": "yarn",
                "factor": 2.0,
                "original_max_position_embeddings": 32,
                "truncate": False,
            }
        },
    ),
    "use_sliding_window": ("qwen2", {"use_sliding_window": True, "sliding_window": 8}),
    "scale_attn_by_inverse_layer_idx": ("gpt2", {"scale_attn_by_inverse_layer_idx": True}),
    "activation_function": ("gpt2", {"activation_function": "quick_gelu"}),
    "add_cross_attention": ("gpt2", {"add_cross_attention": True}),
}


@pytest.mark.parametrize("field", REFUSED)
def test_inexpressible_field_is_refused(field):
    family, overrides = REFUSED[field]
    hf = getattr(
        transformers,
        {
            "llama": "LlamaForCausalLM",
            "mistral": "MistralForCausalLM",
            "qwen2": "Qwen2ForCausalLM",
            "gpt2": "GPT2LMHeadModel",
        }[family],
    )
    with pytest.raises(ValueError, match=f"'{field}'"):
        from_hf(hf(hf_config(family, **overrides)))


def test_unread_field_at_non_default_value_is_refused():
    config = hf_config("llama")
    config.some_new_field = 3  # a field a future transformers could add
    with pytest.raises(ValueError, match="'some_new_field'"):
        from_hf(transformers.LlamaForCausalLM(config))


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"use_scalenorm": True}, "norm"),
        ({"macaron": True}, "macaron"),
        ({"rotary_xpos": True}, "rotary_xpos"),
    ],
)
def test_inexpressible_flag_is_refused_on_export(extra, named):
    layers = {
        k: v
        for k, v in LLAMA_FLAGS.items()
        if not (k == "use_rmsnorm" and "use_scalenorm" in extra)
    }
    layers.pop("norm_eps") if "use_scalenorm" in extra else None
    model = x_model({**layers, **extra}, use_abs_pos_emb=False)
    with pytest.raises(ValueError, match=named):
        to_hf(model)


def test_non_zero_head_bias_is_refused_on_export():
    model = x_model(LLAMA_FLAGS, use_abs_pos_emb=False)
    with torch.no_grad():
        model.to_logits.bias.fill_(0.5)
    with pytest.raises(ValueError, match="to_logits.bias"):
        to_hf(model)


def test_zero_head_bias_exports_and_comes_back_without_it():
    """A default head's bias, when zero, is dropped on export: same logits, no bias after."""
    model = x_model(LLAMA_FLAGS, use_abs_pos_emb=False)  # default head: with a (zeroed) bias
    back = from_hf(to_hf(model))
    assert model.to_logits.bias is not None and back.to_logits.bias is None
    x = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_imported_untied_head_has_no_bias(family):
    """Hugging Face heads have no bias, so the import builds none (not a zero one)."""
    model = from_hf(tiny_hf(family, tie_word_embeddings=False))
    assert model._config_kwargs["logits_bias"] is False
    assert "to_logits.bias" not in model.state_dict()
