"""A cross-attention context whose width differs from ``dim``: ``cross_attn_dim_context`` and
``attn_dim_context`` (x-transformers' spellings).

Shape legend: b batch, n tokens, j context length, d model dim, dc context width.
"""

from __future__ import annotations

import pytest
import torch
from flag_models import prefill_then_steps
from reference import reference_attention

from x_attn import (
    Attention,
    ContinuousTransformerWrapper,
    CrossAttender,
    Decoder,
    TransformerWrapper,
    XTransformer,
)

B, N, J, D, DC, H, DH = 2, 5, 6, 16, 24, 2, 8


def _context(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, J, DC, generator=g, dtype=torch.float64)


def test_cross_attention_reads_a_wider_context() -> None:
    """The layer equals softmax attention over keys/values projected from the 24-wide context."""
    torch.manual_seed(0)
    layer = Attention(D, heads=H, dim_head=DH, dim_context=DC).double()
    x = torch.randn(B, N, D, dtype=torch.float64)
    context, context_mask = _context(), torch.ones(B, J, dtype=torch.bool)
    context_mask[1, :2] = False
    proj = layer.proj

    def split(t):
        return t.unflatten(-1, (H, DH)).transpose(1, 2)

    q, k, v = (
        split(x @ proj.to_q.weight.T),
        split(context @ proj.to_k.weight.T),
        split(context @ proj.to_v.weight.T),
    )
    out = reference_attention(q, k, v, mask=context_mask[:, None, None, :])
    expected = out.transpose(1, 2).flatten(2) @ layer.to_out.weight.T
    got = layer(x, context, context_mask=context_mask)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def _decoder(**flags) -> TransformerWrapper:
    torch.manual_seed(0)
    layers = Decoder(dim=D, depth=2, heads=H, attn_dim_head=DH, cross_attend=True, **flags)
    return TransformerWrapper(num_tokens=20, max_seq_len=16, attn_layers=layers).double().eval()


@pytest.mark.parametrize("latent", [False, True])
def test_stack_flag_sizes_only_cross_attention_and_decodes_with_a_cache(latent: bool) -> None:
    flags = {"cross_attn_dim_context": DC}
    if latent:
        flags.update(cross_attn_use_latent_kv=True, cross_attn_dim_latent_kv=10)
    model = _decoder(**flags)
    blocks = [
        (t, layer["block"]) for t, layer in zip(model.attn_layers.types, model.attn_layers.layers)
    ]
    assert {t: b.dim_context for t, b in blocks if t in "ac"} == {"a": D, "c": DC}
    ids, context = torch.randint(0, 20, (B, 7)), _context(1)
    stepped, _ = prefill_then_steps(model, ids, 5, context=context)
    torch.testing.assert_close(stepped, model(ids, context=context), atol=1e-9, rtol=0)


def test_attn_dim_context_on_a_cross_attender_and_a_continuous_wrapper() -> None:
    torch.manual_seed(0)
    stack = CrossAttender(dim=D, depth=1, heads=H, attn_dim_context=DC)
    model = ContinuousTransformerWrapper(dim_in=3, dim_out=3, max_seq_len=8, attn_layers=stack)
    out = model(torch.randn(B, N, 3), context=_context().float())
    assert out.shape == (B, N, 3) and torch.isfinite(out).all()


def test_a_context_of_the_wrong_width_names_the_flag_to_set() -> None:
    model = _decoder()
    with pytest.raises(
        ValueError,
        match="'context' has width 24, but the cross-attention layers read width 16; build "
        "the stack with cross_attn_dim_context=24",
    ):
        model(torch.randint(0, 20, (B, 4)), context=_context())
    layer = Attention(D, heads=H, dim_context=DC)
    with pytest.raises(
        ValueError,
        match="'context' has width 16, but this layer reads width 24; build it with dim_context=16",
    ):
        layer(torch.randn(B, N, D), torch.randn(B, J, D))
    with pytest.raises(
        ValueError, match="reads keys of width dim_context=24, but was called without a context"
    ):
        layer(torch.randn(B, N, D))


@pytest.mark.parametrize(
    ("build", "error", "pattern"),
    [
        (
            lambda: Decoder(dim=D, depth=1, attn_dim_context=DC),
            ValueError,
            "attn_dim_context=24 sets the key/value input width of every attention layer"
            ".*use cross_attn_dim_context=24",
        ),
        (
            lambda: Decoder(dim=D, depth=1, cross_attend=True, cross_attn_dim_context="24"),
            TypeError,
            "'cross_attn_dim_context' must be int or None",
        ),
        (
            lambda: Decoder(dim=D, depth=1, cross_attend=True, cross_attn_dim_context=0),
            ValueError,
            "'cross_attn_dim_context' must be >= 1",
        ),
    ],
)
def test_refused_context_widths(build, error, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        build()


def test_attention_dim_context_given_twice_must_agree() -> None:
    from x_attn.config import AttentionConfig

    with pytest.raises(ValueError, match="dim_context=24 and attn_dim_context=12 disagree"):
        Attention(D, dim_context=DC, config=AttentionConfig(dim_context=12))
    assert Attention(D, config=AttentionConfig(dim_context=12)).dim_context == 12


def test_xtransformer_context_is_the_encoder_output() -> None:
    """dim is shared, so the decoder's context width is dim: setting it is refused."""
    with pytest.raises(
        ValueError, match="'dec_cross_attn_dim_context' is set by XTransformer itself"
    ):
        XTransformer(
            dim=D,
            enc_num_tokens=10,
            enc_depth=1,
            enc_max_seq_len=8,
            dec_num_tokens=10,
            dec_depth=1,
            dec_max_seq_len=8,
            dec_cross_attn_dim_context=DC,
        )
