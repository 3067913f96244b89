"""Every code example of the seed x-transformers README (2021), with x_transformers -> x_attn.

Each test holds one README example, written out with the README's sizes. The only edits:
the import names ``x_attn`` instead of ``x_transformers``, and ``.cuda()`` calls are removed
(marked ``# README: .cuda()``) because the suite runs on CPU. The GPT-3 example, which the
README says "you wouldn't be able to run", is built on the ``meta`` device (shapes only, no
memory) and its parameter count is checked against the paper's 175B.

After each example the test asserts something that could be false: the output shape the
README's comment states, a finite loss whose backward reaches every parameter, or, for the
examples that only construct a model, that the flag reached the stack and that a short
forward gives the right shape. Forward-only examples run under ``torch.no_grad()``.
Examples with 1024-token forwards are marked ``slow`` and still run by default.
"""

from __future__ import annotations

import os

import pytest
import torch

NUM_TOKENS = 20000
PROBE_LEN = 64


@pytest.fixture(autouse=True, scope="module")
def _threads_and_seed():
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    torch.manual_seed(0)
    yield
    torch.set_num_threads(before)


def _probe(model, n: int = PROBE_LEN) -> torch.Tensor:
    """A short forward of a README model built without running it; checks shape and values."""
    x = torch.randint(0, NUM_TOKENS, (1, n))
    with torch.no_grad():
        out = model.eval()(x)
    assert out.shape == (1, n, NUM_TOKENS)
    assert torch.isfinite(out).all()
    return out


def _assert_trained_every_parameter(model, loss) -> None:
    assert loss.ndim == 0 and torch.isfinite(loss)
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# ------------------------------------------------------------------------------------------------
# Full encoder / decoder


@pytest.mark.slow
def test_full_encoder_decoder():
    import torch

    from x_attn import XTransformer

    model = XTransformer(
        dim=512,
        enc_num_tokens=256,
        enc_depth=6,
        enc_heads=8,
        enc_max_seq_len=1024,
        dec_num_tokens=256,
        dec_depth=6,
        dec_heads=8,
        dec_max_seq_len=1024,
        tie_token_emb=True,  # tie embeddings of encoder and decoder
    )

    src = torch.randint(0, 256, (1, 1024))
    src_mask = torch.ones_like(src).bool()
    tgt = torch.randint(0, 256, (1, 1024))
    tgt_mask = torch.ones_like(tgt).bool()

    loss = model(src, tgt, src_mask=src_mask, tgt_mask=tgt_mask)  # (1, 1024, 512)
    loss.backward()

    # the README's comment is a leftover: the model returns the scalar next-token loss
    _assert_trained_every_parameter(model, loss)
    assert model.encoder.token_emb.weight is model.decoder.net.token_emb.weight


# ------------------------------------------------------------------------------------------------
# Decoder-only (GPT-like), GPT-3, Encoder-only (BERT-like)


@pytest.mark.slow
def test_decoder_only_gpt_like():
    import torch

    from x_attn import Decoder, TransformerWrapper

    model = TransformerWrapper(
        num_tokens=20000, max_seq_len=1024, attn_layers=Decoder(dim=512, depth=12, heads=8)
    )  # README: .cuda()

    x = torch.randint(0, 256, (1, 1024))  # README: .cuda()
    with torch.no_grad():
        out = model(x)  # (1, 1024, 20000)

    assert out.shape == (1, 1024, 20000) and torch.isfinite(out).all()


def test_gpt3_construction_on_meta_device():
    from x_attn import Decoder, TransformerWrapper

    # "you wouldn't be able to run it anyways": 175B parameters are ~700 GB in float32, so the
    # model is built on the meta device (shapes only) instead of .cuda()
    with torch.device("meta"):
        gpt3 = TransformerWrapper(
            num_tokens=50000,
            max_seq_len=2048,
            attn_layers=Decoder(dim=12288, depth=96, heads=96, attn_dim_head=128),
        )  # README: .cuda()

    count = sum(p.numel() for p in gpt3.parameters())
    assert abs(count - 175e9) / 175e9 < 0.01  # GPT-3 paper (arXiv 2005.14165): 175B
    assert all(p.device.type == "meta" for p in gpt3.parameters())


@pytest.mark.slow
def test_encoder_only_bert_like():
    import torch

    from x_attn import Encoder, TransformerWrapper

    model = TransformerWrapper(
        num_tokens=20000, max_seq_len=1024, attn_layers=Encoder(dim=512, depth=12, heads=8)
    )  # README: .cuda()

    x = torch.randint(0, 256, (1, 1024))  # README: .cuda()
    mask = torch.ones_like(x).bool()

    with torch.no_grad():
        out = model(x, mask=mask)  # (1, 1024, 20000)

    assert out.shape == (1, 1024, 20000) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------
# Images


def test_image_classification():
    import torch

    from x_attn import Encoder, ViTransformerWrapper

    model = ViTransformerWrapper(
        image_size=256,
        patch_size=32,
        num_classes=1000,
        attn_layers=Encoder(
            dim=512,
            depth=6,
            heads=8,
        ),
    )

    img = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        out = model(img)  # (1, 1000)

    assert out.shape == (1, 1000) and torch.isfinite(out).all()


@pytest.mark.slow
def test_image_to_caption():
    import torch

    from x_attn import Decoder, Encoder, TransformerWrapper, ViTransformerWrapper

    encoder = ViTransformerWrapper(
        image_size=256, patch_size=32, attn_layers=Encoder(dim=512, depth=6, heads=8)
    )

    decoder = TransformerWrapper(
        num_tokens=20000,
        max_seq_len=1024,
        attn_layers=Decoder(dim=512, depth=6, heads=8, cross_attend=True),
    )

    img = torch.randn(1, 3, 256, 256)
    caption = torch.randint(0, 20000, (1, 1024))

    with torch.no_grad():
        encoded = encoder(img, return_embeddings=True)
        out = decoder(caption, context=encoded)  # (1, 1024, 20000)

    assert encoded.shape == (1, (256 // 32) ** 2 + 1, 512)  # patches + class token
    assert out.shape == (1, 1024, 20000) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------
# Dropout


@pytest.mark.slow
def test_dropout():
    import torch

    from x_attn import Decoder, TransformerWrapper

    model = TransformerWrapper(
        num_tokens=20000,
        max_seq_len=1024,
        emb_dropout=0.1,  # dropout after embedding
        attn_layers=Decoder(
            dim=512,
            depth=6,
            heads=8,
            attn_dropout=0.1,  # dropout post-attention
            ff_dropout=0.1,  # feedforward dropout
        ),
    )

    x = torch.randint(0, 20000, (1, 1024))
    with torch.no_grad():
        out = model(x)
        again = model(x)

    assert out.shape == (1, 1024, 20000) and torch.isfinite(out).all()
    assert not torch.equal(out, again)  # a fresh module is in training mode: dropout is on


# ------------------------------------------------------------------------------------------------
# Features: each README example builds a model; the test probes it with a short sequence


def test_augmenting_self_attention_with_persistent_memory():
    from x_attn import Encoder

    enc = Encoder(
        dim=512,
        depth=6,
        heads=8,
        attn_num_mem_kv=16,  # 16 memory key / values
    )

    assert enc.config.attn.num_mem_kv == 16
    x = torch.randn(1, PROBE_LEN, 512)
    with torch.no_grad():
        assert enc.eval()(x).shape == (1, PROBE_LEN, 512)


def test_memory_transformers():
    from x_attn import Encoder, TransformerWrapper

    model = TransformerWrapper(
        num_tokens=20000,
        max_seq_len=1024,
        num_memory_tokens=20,  # 20 memory tokens
        attn_layers=Encoder(dim=512, depth=6, heads=8),
    )

    assert model.memory_tokens.shape == (20, 512)
    _probe(model)  # memory tokens are stripped from the output


def test_transformers_without_tears():
    from x_attn import Decoder, TransformerWrapper

    model = TransformerWrapper(
        num_tokens=20000,
        max_seq_len=1024,
        attn_layers=Decoder(
            dim=512,
            depth=6,
            heads=8,
            use_scalenorm=True,  # set to true to use for all layers
        ),
    )

    assert model.attn_layers.config.norm == "scalenorm"
    _probe(model)


def test_glu_variants():
    from x_attn import Decoder, TransformerWrapper

    model = TransformerWrapper(
        num_tokens=20000,
        max_seq_len=1024,
        attn_layers=Decoder(
            dim=512,
            depth=6,
            heads=8,
            ff_glu=True,  # set to true to use for all feedforwards
        ),
    )

    assert model.attn_layers.config.ff.glu
    _probe(model)


def test_rezero():
    from x_attn import Decoder, TransformerWrapper

    model = TransformerWrapper(
        num_tokens=20000,
        max_seq_len=1024,
        attn_layers=Decoder(
            dim=512,
            depth=6,
            heads=8,
            use_rezero=True,  # set to true to use for all layers
        ),
    )

    assert model.attn_layers.config.use_rezero
    _probe(model)


def test_explicit_sparse_transformer():
    from x_attn import Decoder, TransformerWrapper

    model = TransformerWrapper(
        num_tokens=20000,
        max_seq_len=1024,
        attn_layers=Decoder(
            dim=512,
            depth=6,
            heads=8,
            attn_sparse_topk=8,  # keep only the top 8 values before attention (softmax)
        ),
    )

    assert model.attn_layers.config.attn.sparse_topk == 8
    _probe(model)


def test_entmax15():
    from x_attn import Decoder, TransformerWrapper

    model = TransformerWrapper(
        num_tokens=20000,
        max_seq_len=1024,
        attn_layers=Decoder(
            dim=512,
            depth=6,
            heads=8,
            attn_use_entmax15=True,  # use entmax15 for attention step
        ),
    )

    assert model.attn_layers.config.attn.use_entmax15
    _probe(model)


def test_talking_heads():
    from x_attn import Decoder, TransformerWrapper

    model = TransformerWrapper(
        num_tokens=20000,
        max_seq_len=1024,
        attn_layers=Decoder(
            dim=512,
            depth=6,
            heads=8,
            attn_talking_heads=True,  # turn on information exchange between attention heads
        ),
    )

    assert model.attn_layers.config.attn.talking_heads
    _probe(model)


def test_collaborative_attention():
    from x_attn import Decoder, TransformerWrapper

    model = TransformerWrapper(
        num_tokens=20000,
        max_seq_len=1024,
        attn_layers=Decoder(
            dim=512,
            depth=6,
            heads=8,
            attn_collab_heads=True,
            attn_collab_compression=0.3,
        ),
    )

    assert model.attn_layers.config.attn.collab_heads
    assert model.attn_layers.config.attn.collab_compression == 0.3
    _probe(model)


def test_attention_on_attention():
    from x_attn import Encoder, TransformerWrapper

    model = TransformerWrapper(
        num_tokens=20000,
        max_seq_len=1024,
        attn_layers=Encoder(
            dim=512,
            depth=6,
            heads=8,
            attn_on_attn=True,  # gate output of attention layer, by queries
        ),
    )

    assert model.attn_layers.config.attn.on_attn
    _probe(model)


def test_sandwich_transformer():
    from x_attn import Encoder, TransformerWrapper

    model = TransformerWrapper(
        num_tokens=20000,
        max_seq_len=1024,
        attn_layers=Encoder(
            dim=512,
            depth=6,
            heads=8,
            sandwich_coef=6,  # interleave attention and feedforwards with sandwich coefficient of 6
        ),
    )

    # Press et al.: with coefficient k = depth, all attention first, then all feed-forwards
    assert "".join(model.attn_layers.types) == "a" * 6 + "f" * 6
    _probe(model)


def test_macaron():
    from x_attn import Encoder, TransformerWrapper

    model = TransformerWrapper(
        num_tokens=20000,
        max_seq_len=1024,
        attn_layers=Encoder(
            dim=512,
            depth=6,
            heads=8,
            macaron=True,  # use macaron configuration
        ),
    )

    assert "".join(model.attn_layers.types) == "faf" * 6
    _probe(model)


def test_t5_relative_position_bias():
    from x_attn import Decoder, TransformerWrapper

    model = TransformerWrapper(
        num_tokens=20000,
        max_seq_len=1024,
        attn_layers=Decoder(
            dim=512,
            depth=6,
            heads=8,
            rel_pos_bias=True,  # adds relative positional bias to all attention layers, a la T5
        ),
    )

    assert model.pos_emb is None  # relative positions replace the absolute table
    _probe(model)


def test_position_infused_attention():
    from x_attn import Decoder, TransformerWrapper

    model = TransformerWrapper(
        num_tokens=20000,
        max_seq_len=1024,
        attn_layers=Decoder(
            dim=512,
            depth=6,
            heads=8,
            position_infused_attn=True,  # turns on position infused attention
        ),
    )

    assert model.attn_layers.config.position_infused_attn and model.pos_emb is None
    _probe(model)


def test_residual_attention():
    from x_attn import Encoder, TransformerWrapper

    model = TransformerWrapper(
        num_tokens=20000,
        max_seq_len=1024,
        attn_layers=Encoder(
            dim=512,
            depth=6,
            heads=8,
            pre_norm=False,  # in the paper, residual attention had best results with post-layernorm
            residual_attn=True,  # add residual attention
        ),
    )

    cfg = model.attn_layers.config
    assert cfg.residual_attn and not cfg.pre_norm
    _probe(model)


def test_cross_residual_attention():
    import torch

    from x_attn import XTransformer

    model = XTransformer(
        dim=512,
        enc_num_tokens=256,
        enc_depth=6,
        enc_heads=8,
        enc_max_seq_len=1024,
        dec_num_tokens=256,
        dec_depth=6,
        dec_heads=8,
        dec_max_seq_len=1024,
        dec_cross_residual_attn=True,  # residualize cross attention
    )

    assert model.decoder.net.attn_layers.config.cross_residual_attn
    assert not model.encoder.attn_layers.config.cross_residual_attn
    src, tgt = torch.randint(0, 256, (1, PROBE_LEN)), torch.randint(0, 256, (1, PROBE_LEN))
    loss = model(src, tgt)
    loss.backward()
    _assert_trained_every_parameter(model, loss)


# ------------------------------------------------------------------------------------------------
# Transformer-XL recurrence, gated residual, rotary


@pytest.mark.slow
def test_transformer_xl_recurrence():
    import torch

    from x_attn import Decoder, TransformerWrapper

    model_xl = TransformerWrapper(
        num_tokens=20000,
        max_seq_len=512,
        max_mem_len=2048,
        attn_layers=Decoder(dim=512, depth=6, heads=8, rel_pos_bias=True),
    )

    seg1 = torch.randint(0, 20000, (1, 512))
    seg2 = torch.randint(0, 20000, (1, 512))
    seg3 = torch.randint(0, 20000, (1, 512))

    with torch.no_grad():
        logits1, mems1 = model_xl(seg1, return_mems=True)
        logits2, mems2 = model_xl(seg2, mems=mems1, return_mems=True)
        logits3, mems3 = model_xl(seg3, mems=mems2, return_mems=True)

    for logits in (logits1, logits2, logits3):
        assert logits.shape == (1, 512, 20000) and torch.isfinite(logits).all()
    # one memory per layer, growing by a segment each step (max_mem_len=2048 not reached yet)
    for mems, length in ((mems1, 512), (mems2, 1024), (mems3, 1536)):
        assert len(mems) == 6 and all(m.shape == (1, length, 512) for m in mems)


def test_gated_transformer_xl():
    from x_attn import Decoder, TransformerWrapper

    model = TransformerWrapper(
        num_tokens=20000,
        max_seq_len=1024,
        max_mem_len=2048,
        attn_layers=Decoder(dim=512, depth=6, heads=16, gate_residual=True),
    )

    assert model.attn_layers.config.gate_residual
    _probe(model)


def test_rotary_positional_embeddings():
    from x_attn import Decoder, TransformerWrapper

    model = TransformerWrapper(
        num_tokens=20000,
        max_seq_len=1024,
        attn_layers=Decoder(
            dim=512,
            depth=6,
            heads=8,
            rotary_pos_emb=True,  # turns on rotary positional embeddings
        ),
    )

    assert model.attn_layers.config.rotary_pos_emb and model.pos_emb is None
    _probe(model)


# ------------------------------------------------------------------------------------------------
# Cross attention, continuous values


def test_cross_attention():
    import torch

    from x_attn import CrossAttender, Encoder

    enc = Encoder(dim=512, depth=6)
    model = CrossAttender(dim=512, depth=6)

    nodes = torch.randn(1, 1, 512)
    node_masks = torch.ones(1, 1).bool()

    neighbors = torch.randn(1, 5, 512)
    neighbor_masks = torch.ones(1, 5).bool()

    with torch.no_grad():
        encoded_neighbors = enc(neighbors, mask=neighbor_masks)
        out = model(
            nodes, context=encoded_neighbors, mask=node_masks, context_mask=neighbor_masks
        )  # (1, 1, 512)

    assert encoded_neighbors.shape == (1, 5, 512)
    assert out.shape == (1, 1, 512) and torch.isfinite(out).all()


@pytest.mark.slow
def test_continuous_values():
    import torch

    from x_attn import ContinuousTransformerWrapper, Decoder

    model = ContinuousTransformerWrapper(
        dim_in=32,
        dim_out=100,
        max_seq_len=1024,
        attn_layers=Decoder(dim=512, depth=12, heads=8),
    )

    x = torch.randn((1, 1024, 32))
    mask = torch.ones(1, 1024).bool()

    with torch.no_grad():
        out = model(x, mask=mask)  # (1, 1024, 100)

    assert out.shape == (1, 1024, 100) and torch.isfinite(out).all()
