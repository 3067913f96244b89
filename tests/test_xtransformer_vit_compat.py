"""XTransformer (return_tgt_loss, src_prepend_embeds, cross_attn_tokens_dropout, x-transformers
flags through enc_ / dec_) and ViTransformerWrapper (num_register_tokens, post_emb_norm,
return_logits_and_embeddings).

References: x-transformers 2.31 on identical weights (skipped when it is not installed), the
loss recomputed from the logits, token dropout replayed under the same random stream, and
invariants of register tokens (attended to, unordered, dropped from the output).

Shape legend: b batch, i source length, j target length, p prepended, d model dim,
v vocabulary, n patches, r registers.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from x_attn import Encoder, ViTransformerWrapper, XTransformer
from x_attn.compat import UnsupportedFlagError
from x_attn.wrappers.xtransformer import dropout_tokens

DIM, VOCAB = 16, 12
SIDES = dict(
    enc_num_tokens=VOCAB,
    enc_depth=1,
    enc_heads=2,
    enc_attn_dim_head=8,
    enc_max_seq_len=16,
    dec_num_tokens=VOCAB,
    dec_depth=1,
    dec_heads=2,
    dec_attn_dim_head=8,
    dec_max_seq_len=16,
)


def seq2seq(**kwargs) -> XTransformer:
    torch.manual_seed(0)
    return XTransformer(dim=DIM, **SIDES, **kwargs).eval()


def src_tgt():
    gen = torch.Generator().manual_seed(1)
    src, tgt = torch.randint(0, VOCAB, (2, 7), generator=gen), torch.randint(0, VOCAB, (2, 5))
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    return src, tgt, mask


def test_return_tgt_loss_false_gives_the_logits_of_the_loss() -> None:
    logits_model, loss_model = seq2seq(return_tgt_loss=False), seq2seq()
    src, tgt, mask = src_tgt()
    logits = logits_model(src, tgt, mask=mask)
    assert logits.shape == (2, 5, VOCAB)
    expected = F.cross_entropy(logits[:, :-1].transpose(1, 2), tgt[:, 1:])
    torch.testing.assert_close(loss_model(src, tgt, mask=mask), expected)


def test_loss_with_prepended_source_equals_x_transformers() -> None:
    xt = pytest.importorskip("x_transformers")
    from x_attn.interop import from_x_transformers

    torch.manual_seed(0)
    theirs = xt.XTransformer(dim=DIM, **SIDES).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    mine = seq2seq()
    from_x_transformers(theirs.encoder, mine.encoder)
    from_x_transformers(theirs.decoder.net, mine.decoder.net)
    src, tgt, mask = src_tgt()
    pre = torch.randn(2, 3, DIM, generator=torch.Generator().manual_seed(2))
    for extra in ({}, {"src_prepend_embeds": pre}):
        a, b = mine(src, tgt, mask=mask, **extra), theirs(src, tgt, mask=mask, **extra)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_dropout_tokens_keeps_a_random_subset_of_real_tokens() -> None:
    context = torch.arange(2 * 10, dtype=torch.float).reshape(2, 10, 1).expand(-1, -1, 3)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 4:] = False
    torch.manual_seed(0)
    kept, kept_mask = dropout_tokens(context, mask, 0.3)
    assert kept.shape == (2, 7, 3)
    assert kept_mask.sum(-1).tolist() == [7, math.ceil(4 * 0.7)]
    for row in range(2):
        ids = kept[row, kept_mask[row], 0].long() - 10 * row
        assert len(set(ids.tolist())) == len(ids)  # distinct
        assert bool(mask[row, ids].all())  # only real tokens are kept as real


def test_cross_attn_tokens_dropout_acts_while_training_only() -> None:
    model, plain = seq2seq(cross_attn_tokens_dropout=0.5), seq2seq()
    src, tgt, mask = src_tgt()
    torch.testing.assert_close(model(src, tgt, mask=mask), plain(src, tgt, mask=mask))
    model.train()
    torch.manual_seed(4)
    loss = model(src, tgt, mask=mask)
    torch.manual_seed(4)
    context, cmask = model.encode(src, mask), mask
    context, cmask = dropout_tokens(context, cmask, 0.5)
    expected = model.decoder(tgt, context=context, context_mask=cmask)
    torch.testing.assert_close(loss, expected)
    assert (loss - plain.train()(src, tgt, mask=mask)).abs() > 1e-6


def test_x_transformers_flags_through_the_prefixes() -> None:
    seq2seq(enc_attn_selective=False, dec_sigsoftmax_logits=False)  # off values: accepted, no-ops
    with pytest.raises(UnsupportedFlagError, match="'attn_selective' is not supported"):
        seq2seq(enc_attn_selective=True)
    with pytest.raises(UnsupportedFlagError, match="'sigsoftmax_logits' is not supported"):
        seq2seq(dec_sigsoftmax_logits=True)
    with pytest.raises(TypeError, match="did you mean 'enc_heads'"):
        seq2seq(enc_heeds=2)


# ------------------------------------------------------------------------------------------------
# ViT


def vit(**kwargs) -> ViTransformerWrapper:
    torch.manual_seed(0)
    return ViTransformerWrapper(
        image_size=8,
        patch_size=4,
        num_classes=5,
        attn_layers=Encoder(dim=DIM, depth=1, heads=2, attn_dim_head=8),
        **kwargs,
    ).eval()


def images() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def test_register_tokens_are_attended_unordered_and_dropped() -> None:
    model, img = vit(num_register_tokens=3), images()
    out = model(img, return_embeddings=True)
    assert out.shape == (2, 5, DIM)  # class token + 4 patches, no registers
    with torch.no_grad():
        model.register_tokens.copy_(model.register_tokens.flip(0))
    torch.testing.assert_close(model(img, return_embeddings=True), out)  # no order
    with torch.no_grad():  # (a constant shift would vanish in the pre-norm)
        model.register_tokens.add_(torch.randn(3, DIM, generator=torch.Generator().manual_seed(5)))
    assert (model(img, return_embeddings=True) - out).abs().max() > 1e-4  # attended to
    stream = []
    model.attn_layers.register_forward_pre_hook(lambda m, a: stream.append(a[0]))
    model(img)
    torch.testing.assert_close(stream[0][:, 5:], model.register_tokens.expand(2, -1, -1))


def test_post_emb_norm_normalises_patch_and_position_embeddings() -> None:
    model, plain, img = vit(post_emb_norm=True), vit(), images()
    with torch.no_grad():
        model.post_emb_norm.weight.uniform_(0.5, 1.5)
    seen = {}
    for name, m in (("norm", model), ("plain", plain)):
        m.attn_layers.register_forward_pre_hook(lambda mod, a, name=name: seen.update({name: a[0]}))
        m(img)
    expected = F.layer_norm(seen["plain"], (DIM,)) * model.post_emb_norm.weight
    torch.testing.assert_close(seen["norm"], expected)


def test_return_logits_and_embeddings() -> None:
    model, img = vit(), images()
    logits, embeddings = model(img, return_logits_and_embeddings=True)
    torch.testing.assert_close(embeddings, model(img, return_embeddings=True))
    torch.testing.assert_close(logits, model.mlp_head(embeddings[:, 0]))
