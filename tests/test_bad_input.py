"""Bad input gets a clear ValueError / TypeError that names the argument (foundation issue)."""

from __future__ import annotations

import pytest
import torch

from x_attn import Attention, ContinuousTransformerWrapper, Decoder, Encoder, TransformerWrapper


def lm(**layer_kwargs) -> TransformerWrapper:
    layers = Decoder(dim=16, depth=1, heads=2, attn_dim_head=8, **layer_kwargs)
    return TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=layers)


def tokens(b: int = 2, n: int = 4) -> torch.Tensor:
    return torch.randint(0, 10, (b, n))


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [
        ("rotary_pos_embb", "rotary_pos_emb"),
        ("attn_dimhead", "attn_dim_head"),
        ("ff_gluu", "ff_glu"),
        ("use_rmsnrom", "use_rmsnorm"),
        ("dim_head", "attn_dim_head"),
    ],
)
def test_unknown_keyword_suggests_closest(typo, suggestion):
    with pytest.raises(
        TypeError,
        match=rf"unknown argument '{typo}' for Decoder; did you mean "
        rf"'{suggestion}'\?",
    ):
        Decoder(dim=16, depth=1, **{typo: True})


def test_unknown_keyword_without_close_match_names_class():
    with pytest.raises(TypeError, match=r"unknown argument 'zzzz' for Encoder$"):
        Encoder(dim=16, depth=1, zzzz=1)


def test_unknown_attention_keyword():
    with pytest.raises(TypeError, match="did you mean 'num_mem_kv'"):
        Attention(16, heads=2, num_mem_k=2)


def test_token_ids_out_of_range():
    model = lm()
    with pytest.raises(ValueError, match=r"'x' holds token ids outside \[0, num_tokens=10\)"):
        model(torch.tensor([[1, 2, 10]]))
    with pytest.raises(ValueError, match="min -1"):
        model(torch.tensor([[-1, 2, 3]]))


def test_float_tokens_refused():
    with pytest.raises(TypeError, match="'x' must hold integer token ids.*ContinuousTransformer"):
        lm()(torch.rand(2, 4))


def test_token_shape():
    with pytest.raises(ValueError, match=r"'x' must have shape \(batch, seq\)"):
        lm()(torch.randint(0, 10, (4,)))


def test_too_long_with_absolute_positions_says_how_to_go_longer():
    with pytest.raises(ValueError, match="max_seq_len=8") as info:
        lm()(tokens(1, 9))
    message = str(info.value)
    assert "rotary_pos_emb=True" in message and "use_abs_pos_emb=False" in message


def test_relative_positions_allow_longer_sequences():
    logits = lm(rotary_pos_emb=True)(tokens(1, 12))
    assert logits.shape == (1, 12, 10)


@pytest.mark.parametrize(
    ("mask", "error", "pattern"),
    [
        (torch.ones(2, 5, dtype=torch.bool), ValueError, r"'mask' must have shape \(2, 4\)"),
        (torch.ones(2, 4), TypeError, r"'mask' must be a bool tensor.*mask.bool\(\)"),
        (torch.ones(2, 4, dtype=torch.long), TypeError, "'mask' must be a bool tensor"),
        ([[True] * 4] * 2, TypeError, "'mask' must be a torch.Tensor"),
    ],
)
def test_bad_mask(mask, error, pattern):
    with pytest.raises(error, match=pattern):
        lm()(tokens(), mask=mask)


def test_bad_attn_mask_shape():
    with pytest.raises(ValueError, match=r"'attn_mask' must have shape \(4, 4\)"):
        lm()(tokens(), attn_mask=torch.ones(4, 5, dtype=torch.bool))


def test_context_missing_for_cross_attending_stack():
    model = lm(cross_attend=True)
    with pytest.raises(ValueError, match="cross-attends: pass context="):
        model(tokens())


def test_context_given_to_non_cross_stack():
    with pytest.raises(ValueError, match="does not cross-attend.*cross_attend=True"):
        lm()(tokens(), context=torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="'context_mask' given to a stack that does not"):
        lm()(tokens(), context_mask=torch.ones(2, 3, dtype=torch.bool))


def test_bad_context():
    model = lm(cross_attend=True)
    with pytest.raises(ValueError, match=r"'context' batch 3 != input batch 2"):
        model(tokens(), context=torch.randn(3, 5, 16))
    with pytest.raises(ValueError, match=r"'context_mask' must have shape \(2, 5\)"):
        model(tokens(), context=torch.randn(2, 5, 16), context_mask=torch.ones(2, 4).bool())
    with pytest.raises(TypeError, match="'context' must be a float tensor"):
        model(tokens(), context=torch.ones(2, 5, 16, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (dict(dim=0), ValueError, "'dim' must be >= 1"),
        (dict(dim=16.0), TypeError, "'dim' must be int, got float 16.0"),
        (dict(rotary_pos_emb="yes"), TypeError, "'rotary_pos_emb' must be bool, got str"),
        (dict(attn_dim_head=8.0), TypeError, "'attn_dim_head' must be int, got float"),
        (
            dict(cross_attn_num_mem_kv=None, cross_attend=True),
            TypeError,
            "'cross_attn_num_mem_kv' must be int, got NoneType",
        ),
        (dict(ff_glu=1), TypeError, "'ff_glu' must be bool, got int"),
        (dict(attn_sparse_topk=2.5), TypeError, "'attn_sparse_topk' must be int or None"),
        (dict(heads=0), ValueError, "'heads' must be >= 1"),
        (dict(depth=0), ValueError, "'depth' must be >= 1"),
        (dict(attn_dim_head=0), ValueError, "'attn_dim_head' must be >= 1"),
        (dict(attn_dropout=1.5), ValueError, r"'attn_dropout' must be in \[0, 1\)"),
        (
            dict(rotary_pos_emb=True, rotary_emb_dim=12, attn_dim_head=8),
            ValueError,
            "rotary_emb_dim=12 exceeds the query/key head dim 8",
        ),
        (dict(rotary_pos_emb=True, rotary_emb_dim=5), ValueError, "must be an even number"),
        (dict(rotary_emb_dim=8), ValueError, "rotary_pos_emb is False"),
        (
            dict(alibi_pos_bias=True, alibi_num_heads=3, heads=2),
            ValueError,
            "alibi_num_heads must be between 1 and heads=2",
        ),
        (dict(rel_pos_bias=True, alibi_pos_bias=True), ValueError, "choose one"),
        (dict(use_rmsnorm=True, use_scalenorm=True), ValueError, "choose one normalisation"),
        (dict(attn_sparse_topk=2, attn_use_entmax15=True), ValueError, "choose one"),
        (
            dict(attn_talking_heads=True, attn_flash=True),
            ValueError,
            "attn_flash=True.*attn_talking_heads",
        ),
    ],
)
def test_refused_construction(kwargs, error, pattern):
    base = dict(dim=16, depth=1, heads=2)
    with pytest.raises(error, match=pattern):
        Decoder(**{**base, **kwargs})


def test_encoder_and_decoder_causality_flags():
    with pytest.raises(ValueError, match="Encoder is never causal"):
        Encoder(dim=16, depth=1, causal=True)
    with pytest.raises(ValueError, match="Decoder is always causal"):
        Decoder(dim=16, depth=1, causal=False)


def test_wrapper_arguments():
    layers = Decoder(dim=16, depth=1, heads=2)
    with pytest.raises(ValueError, match="'num_tokens' must be >= 1"):
        TransformerWrapper(num_tokens=0, max_seq_len=8, attn_layers=layers)
    with pytest.raises(TypeError, match="'attn_layers' must be an Encoder, Decoder"):
        TransformerWrapper(num_tokens=4, max_seq_len=8, attn_layers=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="tie_embedding=True needs logits_dim == num_tokens"):
        TransformerWrapper(
            num_tokens=4, max_seq_len=8, attn_layers=layers, tie_embedding=True, logits_dim=5
        )
    with pytest.raises(ValueError, match="'max_mem_len' must be an int >= 0"):
        TransformerWrapper(num_tokens=4, max_seq_len=8, attn_layers=layers, max_mem_len=-1)


def test_reversible_refuses_memories_and_cache():
    layers = Decoder(dim=16, depth=1, heads=2, reversible=True)
    with pytest.raises(ValueError, match="max_mem_len.*reversible=True"):
        TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=layers, max_mem_len=4)
    model = TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=layers)
    with pytest.raises(ValueError, match="return_cache=True: this model cannot use a KV cache"):
        model(tokens(), return_cache=True)
    with pytest.raises(ValueError, match="return_mems=True: this stack keeps no per-layer"):
        model(tokens(), return_mems=True)
    logits, inter = model(tokens(), return_intermediates=True)  # intermediates, no cache
    assert inter.cache is None and logits.shape == (2, 4, 10)


def test_continuous_input_checks():
    model = ContinuousTransformerWrapper(
        max_seq_len=8, dim_in=3, attn_layers=Encoder(dim=16, depth=1)
    )
    with pytest.raises(ValueError, match=r"'x' must have shape \(batch, seq, 3\)"):
        model(torch.randn(2, 4, 4))
    with pytest.raises(TypeError, match="'x' must be a float tensor"):
        model(torch.ones(2, 4, 3, dtype=torch.long))


def _vit(**extra):
    from x_attn import ViTransformerWrapper

    return ViTransformerWrapper(
        image_size=8, patch_size=4, attn_layers=Encoder(dim=16, depth=1), **extra
    )


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: TransformerWrapper(
                num_tokenz=4, max_seq_len=8, attn_layers=Decoder(dim=16, depth=1)
            ),
            "unknown argument 'num_tokenz' for TransformerWrapper; did you mean 'num_tokens'?",
        ),
        (
            lambda: lm()(tokens(), maks=None),
            "unknown argument 'maks' for Decoder.forward; did you mean 'mask'?",
        ),
        (
            lambda: lm()(tokens(), contxt=None),
            "unknown argument 'contxt' for Decoder.forward; did you mean 'context'?",
        ),
        (
            lambda: _vit(num_class=3),
            "unknown argument 'num_class' for ViTransformerWrapper; did you mean 'num_classes'?",
        ),
        (
            lambda: ContinuousTransformerWrapper(
                max_seq_len=8, dimin=3, attn_layers=Encoder(dim=16, depth=1)
            ),
            "unknown argument 'dimin' for ContinuousTransformerWrapper; did you mean 'dim_in'?",
        ),
    ],
)
def test_wrapper_keywords_suggest_closest(build, message):
    with pytest.raises(TypeError) as info:
        build()
    assert str(info.value) == message


def test_generation_wrapper_keyword_suggestion():
    from x_attn import AutoregressiveWrapper, XLAutoregressiveWrapper

    for cls in (AutoregressiveWrapper, XLAutoregressiveWrapper):
        with pytest.raises(
            TypeError, match=f"'ignore_idx' for {cls.__name__}; did you mean 'ignore_index'"
        ):
            cls(lm(), ignore_idx=0)
