"""x-transformers flags x_attn lacks: dropped at their off value, refused otherwise.

The off value is x-transformers' own default (x_attn.compat_flags, generated from its
signatures). Dropping must change nothing: the model built with the flag at its default equals
the model built without it, weight for weight and output for output.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from x_attn import (
    Attention,
    Decoder,
    Encoder,
    FeedForward,
    TransformerWrapper,
    from_config,
    to_config,
)
from x_attn.compat import UnsupportedFlagError, is_unsupported_noop, markdown, unsupported_flags
from x_attn.compat_flags import FLAGS, NO_DEFAULT
from x_attn.routing import known_layer_arguments

ROOT = Path(__file__).resolve().parent.parent
STACK = "AttentionLayers.__init__"
MISSING_STACK = sorted(
    name
    for name, default in FLAGS[STACK].items()
    if name not in known_layer_arguments() | {"dim", "depth", "heads", "causal", "cross_attend"}
)
DROPPABLE = [n for n in MISSING_STACK if FLAGS[STACK][n] is not NO_DEFAULT]


def _tiny(**flags) -> TransformerWrapper:
    torch.manual_seed(0)
    return TransformerWrapper(
        num_tokens=16, max_seq_len=8, attn_layers=Decoder(dim=16, depth=1, heads=2, **flags)
    ).eval()


def test_lists_are_not_empty() -> None:
    assert len(DROPPABLE) > 50  # x-transformers 2.31 has many flags x_attn lacks


@pytest.mark.parametrize("name", DROPPABLE)
def test_stack_flag_at_default_changes_nothing(name: str) -> None:
    plain, flagged = _tiny(), _tiny(**{name: FLAGS[STACK][name]})
    x = torch.randint(0, 16, (2, 6))
    assert plain.state_dict().keys() == flagged.state_dict().keys()
    torch.testing.assert_close(plain(x), flagged(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", MISSING_STACK)
def test_stack_flag_at_other_value_is_refused(name: str) -> None:
    default = FLAGS[STACK][name]
    other = (not default) if isinstance(default, bool) else object()
    message = rf"Decoder: x-transformers flag '{name}' is not supported by x_attn yet; see docs/"
    with pytest.raises(UnsupportedFlagError, match=message):
        Decoder(dim=16, depth=1, heads=2, **{name: other})


def test_unsupported_is_a_type_error_without_did_you_mean() -> None:
    with pytest.raises(TypeError) as info:
        Decoder(dim=16, depth=1, heads=2, attn_selective=True)
    assert "did you mean" not in str(info.value)


def test_names_unknown_to_both_libraries_keep_did_you_mean() -> None:
    with pytest.raises(TypeError, match="did you mean 'rotary_pos_emb'") as info:
        Decoder(dim=16, depth=1, heads=2, rotary_pos_embb=True)
    assert not isinstance(info.value, UnsupportedFlagError)


def test_bool_default_is_not_matched_by_an_int() -> None:
    # 0 == False in Python, but 0 is not x-transformers' default of a boolean flag
    with pytest.raises(UnsupportedFlagError):
        Decoder(dim=16, depth=1, heads=2, attn_selective=0)


@pytest.mark.parametrize(
    ("build", "owner"),
    [
        (lambda **kw: Attention(16, heads=2, **kw), "Attention"),
        pytest.param(
            lambda **kw: FeedForward(16, **kw),
            "FeedForward",
            marks=pytest.mark.xfail(
                strict=True,
                reason="x_attn/layers/feedforward.py checks its keywords itself; it should use "
                "routing.build_config like Attention (owned by the layers refactor)",
            ),
        ),
    ],
)
def test_building_blocks_use_their_own_flag_lists(build, owner) -> None:
    key = f"{owner}.__init__"
    name = next(
        n
        for n, d in sorted(FLAGS[key].items())
        if isinstance(d, bool) and not d and n in unsupported_flags().get(key, [])
    )
    build(**{name: False})
    with pytest.raises(UnsupportedFlagError, match=f"{owner}: x-transformers flag '{name}'"):
        build(**{name: True})


def test_wrapper_constructor_and_forward_flags() -> None:
    layers = Encoder(dim=16, depth=1, heads=2)
    model = TransformerWrapper(
        num_tokens=16,
        max_seq_len=8,
        attn_layers=layers,
        sigsoftmax_logits=False,
        num_output_heads=1,
    )
    x = torch.randint(0, 16, (1, 5))
    torch.testing.assert_close(model(x, return_logit_entropies=False, detach_mems=True), model(x))
    assert "sigsoftmax_logits" not in to_config(model)["kwargs"]  # dropped: not recorded
    from_config(to_config(model))
    with pytest.raises(UnsupportedFlagError, match="TransformerWrapper: x-transformers flag"):
        TransformerWrapper(num_tokens=16, max_seq_len=8, attn_layers=layers, sigsoftmax_logits=True)
    with pytest.raises(UnsupportedFlagError, match=r"TransformerWrapper\.forward: x-transformers"):
        model(x, return_logit_entropies=True)
    with pytest.raises(UnsupportedFlagError, match=r"Encoder\.forward: x-transformers flag"):
        model(x, cache_age=3)


def test_noop_value_overrides_the_x_transformers_default() -> None:
    # the stack with a cache takes only the new rows: x-transformers' input_not_include_cache=True
    assert is_unsupported_noop("Decoder", "forward", "input_not_include_cache", True)
    with pytest.raises(UnsupportedFlagError):
        is_unsupported_noop("Decoder", "forward", "input_not_include_cache", False)


def test_docs_list_is_current() -> None:
    doc = (ROOT / "docs" / "compat.md").read_text()
    assert markdown() in doc, "regenerate the list in docs/compat.md: python scripts/compat_doc.py"


def test_flag_data_matches_installed_x_transformers() -> None:
    pytest.importorskip("x_transformers")
    from importlib.metadata import version

    from x_attn.compat_flags import X_TRANSFORMERS_VERSION

    if version("x-transformers") != X_TRANSFORMERS_VERSION:
        pytest.skip(f"data recorded from x-transformers {X_TRANSFORMERS_VERSION}")
    path = ROOT / "scripts" / "compat_flags_from_x_transformers.py"
    spec = importlib.util.spec_from_file_location("gen_compat_flags", path)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    fresh = {"AttentionLayers.__init__": gen.stack_flags()}
    for owner, (cls, methods) in gen.SIGNATURES.items():
        for name in methods:
            fresh[f"{owner}.{name}"] = gen.params(gen.method(cls, name))
    assert {k: sorted(v) for k, v in fresh.items()} == {k: sorted(v) for k, v in FLAGS.items()}
