"""ViTransformerWrapper, ContinuousTransformerWrapper and XTransformer.

Expected values come from hand computations in the tests (F.unfold / conv2d patch
embedding, explicit cross-entropy, greedy decoding written out) or from invariants (padding,
causality, cache and mems against the full forward).

Shape legend: b batch, n sequence, d model dim, c channels, v vocabulary.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from x_attn.cache import KVCache
from x_attn.layers.stack import Decoder, Encoder
from x_attn.wrappers.continuous import ContinuousTransformerWrapper
from x_attn.wrappers.token import TransformerWrapper
from x_attn.wrappers.vit import ViTransformerWrapper

DIM = 32


def _vit(**kwargs):
    torch.manual_seed(0)
    layers = kwargs.pop("attn_layers", None) or Encoder(dim=DIM, depth=1, heads=2)
    args = dict(image_size=16, patch_size=4, num_classes=5, attn_layers=layers)
    return ViTransformerWrapper(**{**args, **kwargs}).eval()


# ------------------------------------------------------------------------------------------------
# ViTransformerWrapper


def test_vit_shapes():
    model = _vit()
    img = torch.randn(2, 3, 16, 16)
    assert model(img).shape == (2, 5)
    assert model(img, return_embeddings=True).shape == (2, 16 + 1, DIM)
    assert _vit(num_classes=None)(img).shape == (2, DIM)
    grey = _vit(channels=1, image_size=8, patch_size=8)
    assert grey(torch.randn(3, 1, 8, 8), return_embeddings=True).shape == (3, 2, DIM)


def test_vit_patch_embedding_matches_unfold_and_conv():
    model = _vit(channels=2, image_size=8, patch_size=4)
    img = torch.randn(2, 2, 8, 8)
    w, bias = model.patch_to_embedding.weight, model.patch_to_embedding.bias
    # F.unfold: (b, c * p * p, patches) with channel-major patch layout, patches in raster order
    patches = F.unfold(img, kernel_size=4, stride=4).transpose(1, 2)
    by_unfold = patches @ w.t() + bias
    conv = F.conv2d(img, w.reshape(DIM, 2, 4, 4), bias, stride=4)
    by_conv = rearrange(conv, "b d gh gw -> b (gh gw) d")
    ours = model.patch_to_embedding(model.patchify(img))
    torch.testing.assert_close(ours, by_unfold)
    torch.testing.assert_close(ours, by_conv)
    seen = {}
    model.attn_layers.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    model(img)
    cls = model.cls_token.expand(2, 1, DIM)
    expected = torch.cat((cls, by_unfold), dim=1) + model.pos_embedding
    torch.testing.assert_close(seen["x"], expected)


def test_vit_head_reads_the_class_token_only():
    model = _vit()
    img = torch.randn(2, 3, 16, 16)
    emb = model(img, return_embeddings=True)
    head = model.mlp_head
    torch.testing.assert_close(model(img), emb[:, 0] @ head.weight.t() + head.bias)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(image_size=18, patch_size=4), "image_size"),
        (dict(patch_size=0), "patch_size"),
        (dict(num_classes=0), "num_classes"),
        (dict(emb_dropout=1.5), "emb_dropout"),
    ],
)
def test_vit_construction_errors(kwargs, word):
    with pytest.raises(ValueError, match=word):
        _vit(**kwargs)


def test_vit_refuses_causal_and_cross_attending_layers():
    with pytest.raises(ValueError, match="causal"):
        _vit(attn_layers=Decoder(dim=DIM, depth=1, heads=2))
    with pytest.raises(ValueError, match="cross"):
        _vit(attn_layers=Encoder(dim=DIM, depth=1, heads=2, cross_attend=True))


def test_vit_forward_errors():
    model = _vit()
    with pytest.raises(ValueError, match="channels=3"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="image_size=16"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(TypeError, match="float"):
        model(torch.zeros(1, 3, 16, 16, dtype=torch.long))


# ------------------------------------------------------------------------------------------------
# ContinuousTransformerWrapper


def _continuous(layers=None, **kwargs):
    torch.manual_seed(0)
    layers = layers or Encoder(dim=DIM, depth=2, heads=2)
    return ContinuousTransformerWrapper(max_seq_len=32, attn_layers=layers, **kwargs).eval()


def test_continuous_dims_and_projections():
    model = _continuous(dim_in=6, dim_out=3)
    x = torch.randn(2, 7, 6)
    out = model(x)
    emb = model(x, return_embeddings=True)
    assert out.shape == (2, 7, 3) and emb.shape == (2, 7, DIM)
    w, b = model.project_out.weight, model.project_out.bias
    torch.testing.assert_close(out, emb @ w.t() + b)
    plain = _continuous()
    assert plain(torch.randn(2, 7, DIM)).shape == (2, 7, DIM)
    assert not any(isinstance(m, torch.nn.Linear) for m in (plain.project_in, plain.project_out))
    with pytest.raises(ValueError, match="'x'"):
        model(torch.randn(2, 7, DIM))
    with pytest.raises(ValueError, match="dim_in"):
        _continuous(dim_in=0)


def test_continuous_masked_keys_have_no_effect():
    model = _continuous(dim_in=6, num_memory_tokens=2)
    x = torch.randn(2, 9, 6)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 6:] = False
    mask[1, :3] = False
    y = x.clone()
    y[~mask] = torch.randn(int((~mask).sum()), 6) * 10
    out_x, out_y = model(x, mask=mask), model(y, mask=mask)
    torch.testing.assert_close(out_x[mask], out_y[mask])
    assert not torch.allclose(model(x), model(y))  # without the mask the change is seen


def test_continuous_decoder_is_causal():
    model = _continuous(Decoder(dim=DIM, depth=2, heads=2), dim_in=6, dim_out=4)
    x = torch.randn(1, 10, 6)
    y = x.clone()
    y[:, 6] += 1.0
    out_x, out_y = model(x), model(y)
    torch.testing.assert_close(out_x[:, :6], out_y[:, :6])
    assert (out_x[:, 6:] - out_y[:, 6:]).abs().amax(dim=-1).min() > 1e-4


def test_continuous_cache_decoding_equals_full_forward():
    model = _continuous(Decoder(dim=DIM, depth=2, heads=2), dim_in=6, num_memory_tokens=3)
    x = torch.randn(2, 8, 6)
    full = model(x)
    cache = KVCache.empty(model.attn_layers.num_attention_layers)
    out, cache = model(x[:, :5], cache=cache, return_cache=True)
    steps = [out]
    for t in range(5, 8):  # a cache is a value: continue from the one each call returns
        out, cache = model(x[:, t : t + 1], cache=cache, return_cache=True)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)


def test_continuous_mems_cover_the_previous_segment():
    layers = Decoder(dim=DIM, depth=2, heads=2, rotary_pos_emb=True)
    model = _continuous(layers, dim_in=6, max_mem_len=16)
    x = torch.randn(1, 12, 6)
    full = model(x)
    first, mems = model(x[:, :5], return_mems=True)
    second, mems2 = model(x[:, 5:], mems=mems, return_mems=True)
    torch.testing.assert_close(torch.cat((first, second), dim=1), full, atol=1e-5, rtol=1e-4)
    assert len(mems2) == 2 and mems2[0].shape == (1, 12, DIM)


def test_continuous_equals_token_wrapper_on_embedded_tokens():
    """Both wrappers share positions and memory tokens: same stack, same weights, same output."""
    torch.manual_seed(0)
    layers = Encoder(dim=DIM, depth=2, heads=2)
    tok = TransformerWrapper(
        num_tokens=11, max_seq_len=16, attn_layers=layers, num_memory_tokens=2
    ).eval()
    cont = ContinuousTransformerWrapper(
        max_seq_len=16, attn_layers=layers, dim_out=11, num_memory_tokens=2
    ).eval()
    with torch.no_grad():
        cont.pos_emb.emb.weight.copy_(tok.pos_emb.emb.weight)
        cont.memory_tokens.copy_(tok.memory_tokens)
        cont.project_out.weight.copy_(tok.to_logits.weight)
        cont.project_out.bias.copy_(tok.to_logits.bias)
    ids = torch.randint(0, 11, (2, 9))
    mask = torch.rand(2, 9) > 0.3
    mask[:, 0] = True
    expected = tok(ids, mask=mask)
    torch.testing.assert_close(cont(tok.token_emb(ids), mask=mask), expected)


# ------------------------------------------------------------------------------------------------
# XTransformer


def _xtransformer(**kwargs):
    from x_attn.wrappers.xtransformer import XTransformer

    torch.manual_seed(0)
    args = dict(
        dim=DIM,
        enc_num_tokens=13,
        enc_depth=1,
        enc_heads=2,
        enc_max_seq_len=16,
        dec_num_tokens=13,
        dec_depth=1,
        dec_heads=4,
        dec_max_seq_len=16,
    )
    return XTransformer(**{**args, **kwargs})


def _heads_of(stack) -> set[int]:
    """Head counts read from the q projections' widths (heads * dim_head)."""
    blocks = [layer["block"] for layer in stack.layers if hasattr(layer["block"], "proj")]
    return {blk.proj.to_q.out_features // blk.config.dim_head for blk in blocks}


def test_xtransformer_routes_prefixed_flags_to_each_stack():
    model = _xtransformer(
        enc_attn_dim_head=8, dec_ff_glu=True, dec_cross_residual_attn=True, enc_emb_dropout=0.25
    )
    enc, dec = model.encoder.attn_layers, model.decoder.net.attn_layers
    assert _heads_of(enc) == {2} and _heads_of(dec) == {4}
    assert enc.config.attn.dim_head == 8 and dec.config.attn.dim_head == 64
    assert dec.config.ff.glu and not enc.config.ff.glu
    assert dec.config.cross_residual_attn and not enc.config.cross_residual_attn
    assert dec.causal and dec.cross_attend and not enc.causal and not enc.cross_attend
    assert model.encoder.emb_dropout.p == 0.25 and model.decoder.net.emb_dropout.p == 0.0
    assert model.encoder.to_logits is None  # the encoder only returns embeddings


def test_xtransformer_tied_token_embedding_is_one_parameter():
    tied = _xtransformer(tie_token_emb=True)
    assert tied.encoder.token_emb.weight is tied.decoder.net.token_emb.weight
    untied = _xtransformer()
    assert untied.encoder.token_emb.weight is not untied.decoder.net.token_emb.weight
    count = sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters())
    assert count == 13 * DIM
    with pytest.raises(ValueError, match="enc_num_tokens"):
        _xtransformer(tie_token_emb=True, dec_num_tokens=14)


def test_xtransformer_src_mask_and_mask_spellings_agree():
    model = _xtransformer().eval()
    src, tgt = torch.randint(0, 13, (2, 9)), torch.randint(0, 13, (2, 7))
    src_mask = torch.ones(2, 9, dtype=torch.bool)
    src_mask[1, 5:] = False
    loss_new = model(src, tgt, mask=src_mask)
    loss_old = model(src, tgt, src_mask=src_mask)
    torch.testing.assert_close(loss_new, loss_old)
    assert not torch.allclose(loss_new, model(src, tgt))  # the mask is really used
    with pytest.raises(ValueError, match="src_mask"):
        model(src, tgt, mask=src_mask, src_mask=src_mask)


def test_xtransformer_loss_is_cross_entropy_of_decoder_logits():
    model = _xtransformer(ignore_index=0, pad_value=0).eval()
    src = torch.randint(1, 13, (2, 9))
    tgt = torch.randint(1, 13, (2, 7))
    tgt[0, 5:] = 0  # padding targets: ignored by the loss
    src_mask = torch.ones(2, 9, dtype=torch.bool)
    src_mask[0, 7:] = False
    tgt_mask = tgt != 0
    loss = model(src, tgt, src_mask=src_mask, tgt_mask=tgt_mask)
    context = model.encoder(src, mask=src_mask, return_embeddings=True)
    logits = model.decoder.net(
        tgt[:, :-1], context=context, context_mask=src_mask, mask=tgt_mask[:, :-1]
    ).double()
    log_probs = logits - logits.logsumexp(dim=-1, keepdim=True)
    target = tgt[:, 1:]
    picked = log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    keep = target != 0
    expected = -(picked * keep).sum() / keep.sum()
    torch.testing.assert_close(loss.double(), expected, atol=1e-5, rtol=1e-5)
    loss.backward()
    assert model.encoder.token_emb.weight.grad.abs().sum() > 0  # gradient reaches the encoder


def test_xtransformer_greedy_generate_is_deterministic_and_matches_hand_decoding():
    model = _xtransformer().eval()
    src, start = torch.randint(0, 13, (2, 9)), torch.randint(0, 13, (2, 1))
    out = model.generate(src, start, 6, temperature=0.0)
    assert out.shape == (2, 6) and out.dtype == torch.long
    assert torch.equal(out, model.generate(src, start, 6, temperature=0.0))
    with torch.no_grad():
        context = model.encoder(src, return_embeddings=True)
        seq = start
        for _ in range(6):
            logits = model.decoder.net(seq, context=context)[:, -1]
            seq = torch.cat((seq, logits.argmax(dim=-1, keepdim=True)), dim=1)
    assert torch.equal(out, seq[:, 1:])


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(enc_heeds=2), TypeError, "did you mean 'enc_heads'"),
        (dict(dec_rotary_pos_embb=True), TypeError, "did you mean 'dec_rotary_pos_emb'"),
        (dict(heads=2), TypeError, "enc_ or dec_"),
        (dict(enc_dim=16), ValueError, "enc_dim"),
        (dict(dec_cross_attend=False), ValueError, "dec_cross_attend"),
    ],
)
def test_xtransformer_argument_errors(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        _xtransformer(**kwargs)


def test_xtransformer_missing_required_argument():
    from x_attn.wrappers.xtransformer import XTransformer

    with pytest.raises(TypeError, match="dec_depth"):
        XTransformer(
            dim=DIM,
            enc_num_tokens=5,
            enc_depth=1,
            enc_max_seq_len=8,
            dec_num_tokens=5,
            dec_max_seq_len=8,
        )
