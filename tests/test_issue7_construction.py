"""Issue 7 items 7, 8 and 11: combinations that built a silently wrong model.

- a 'c' in ``custom_layers`` is a cross-attention block (context required), as in x-transformers;
- a stack without self-attention (CrossAttender, ``only_cross``) refuses flags that act on
  self-attention only, and its wrapper keeps the absolute positions;
- an ``AutoregressiveWrapper`` refuses a stack whose self-attention sees the future.

Shape legend: b batch, n sequence, j context length, d model dim.
"""

from __future__ import annotations

import pytest
import torch

from x_attn import (
    AttentionLayers,
    AutoregressiveWrapper,
    CrossAttender,
    Decoder,
    Encoder,
    TransformerWrapper,
    XLAutoregressiveWrapper,
)

D = 16
DIMS = dict(dim=D, heads=2, attn_dim_head=8)


def jittered(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module.double().eval()


# --- item 7: 'c' in custom_layers ------------------------------------------------------------


def test_custom_cross_layer_requires_context():
    layers = Decoder(depth=1, custom_layers=("a", "c", "f"), **DIMS)
    assert layers.cross_attend
    with pytest.raises(ValueError, match="cross-attends: pass context"):
        layers(torch.randn(1, 4, D))


def test_custom_cross_layer_is_the_cross_attention_of_cross_attend():
    """Same weights, same function as the default (a, c, f) block of cross_attend=True."""
    custom = jittered(Decoder(depth=1, custom_layers=("a", "c", "f"), **DIMS))
    default = Decoder(depth=1, cross_attend=True, **DIMS).double().eval()
    default.load_state_dict(custom.state_dict())
    x, context = torch.randn(2, 5, D).double(), torch.randn(2, 3, D).double()
    out = custom(x, context=context)
    torch.testing.assert_close(out, default(x, context=context), atol=1e-12, rtol=0)
    moved = x.clone()
    moved[:, 3:] += torch.randn(2, 2, D).double()  # causal: the future has no effect
    torch.testing.assert_close(custom(moved, context=context)[:, :3], out[:, :3])
    assert not torch.allclose(custom(x, context=context + 1), out)  # the context is read


@pytest.mark.parametrize(
    ("flags", "pattern"),
    [
        (dict(cross_attend=True, custom_layers=("a", "f")), "cross_attend=True.*no 'c'"),
        (dict(only_cross=True, custom_layers=("a", "c", "f")), "only_cross=True.*'a'"),
    ],
)
def test_custom_layers_contradicting_cross_flags_refused(flags, pattern):
    with pytest.raises(ValueError, match=pattern):
        Encoder(depth=1, **flags, **DIMS)


# --- item 8: stacks without self-attention ---------------------------------------------------

SELF_ONLY = ["rotary_pos_emb", "rel_pos_bias", "alibi_pos_bias", "position_infused_attn"]


@pytest.mark.parametrize("flag", [*SELF_ONLY, "residual_attn", "causal"])
@pytest.mark.parametrize(
    "build",
    [
        lambda **kw: CrossAttender(depth=1, **DIMS, **kw),
        lambda **kw: AttentionLayers(depth=1, only_cross=True, **DIMS, **kw),
        lambda **kw: AttentionLayers(
            depth=1, cross_attend=True, custom_layers=("c", "f"), **DIMS, **kw
        ),
    ],
    ids=["CrossAttender", "only_cross", "custom_c_f"],
)
def test_self_attention_flags_refused_without_self_attention(flag, build):
    with pytest.raises(ValueError, match=rf"{flag}.*no self-attention layer"):
        build(**{flag: True})


def test_decoder_only_cross_refused():
    with pytest.raises(ValueError, match="causal.*no self-attention layer"):
        Decoder(depth=1, only_cross=True, **DIMS)


def test_cross_attender_wrapper_keeps_absolute_positions():
    model = jittered(
        TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=CrossAttender(depth=1, **DIMS))
    )
    assert model.pos_emb is not None
    x, context = torch.tensor([[1, 2, 3, 4]]), torch.randn(1, 3, D).double()
    out = model(x, context=context)
    swapped = model(x[:, [1, 0, 2, 3]], context=context)
    # position-blind cross-attention would only swap the first two outputs
    assert not torch.allclose(swapped[:, [1, 0]], out[:, :2])


@pytest.mark.parametrize("flag", SELF_ONLY)
def test_relative_positions_with_self_attention_drop_absolute_ones(flag):
    layers = Decoder(depth=1, cross_attend=True, **{flag: True}, **DIMS)
    assert TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=layers).pos_emb is None


# --- item 11: a non-causal stack cannot be trained autoregressively --------------------------


@pytest.mark.parametrize(
    "layers",
    [
        lambda: Encoder(depth=1, **DIMS),
        lambda: AttentionLayers(depth=1, **DIMS),
        lambda: Encoder(depth=1, cross_attend=True, **DIMS),
    ],
    ids=["Encoder", "AttentionLayers", "Encoder+cross"],
)
@pytest.mark.parametrize("wrapper", [AutoregressiveWrapper, XLAutoregressiveWrapper])
def test_autoregressive_wrappers_refuse_non_causal_self_attention(layers, wrapper):
    net = TransformerWrapper(num_tokens=10, max_seq_len=8, max_mem_len=4, attn_layers=layers())
    with pytest.raises(ValueError, match=f"{wrapper.__name__}.*not causal.*Decoder"):
        wrapper(net)


def test_autoregressive_wrappers_accept_causal_stacks():
    for layers in (Decoder(depth=1, **DIMS), AttentionLayers(depth=1, causal=True, **DIMS)):
        net = TransformerWrapper(num_tokens=10, max_seq_len=8, max_mem_len=4, attn_layers=layers)
        AutoregressiveWrapper(net)
        XLAutoregressiveWrapper(net)
