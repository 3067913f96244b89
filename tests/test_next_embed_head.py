"""add_continuous_pred_head: a head predicting the next position's input embedding.

References: the auxiliary loss written out by hand (L1 against the embedding-table row of the
next token, which with rotary positions is exactly the stack's input), its gradient with the
target detached, x-transformers 2.31 on identical weights for the head's outputs (skipped when
it is not installed).

Shape legend: b batch, n sequence, d model dim, v vocabulary.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from x_attn import AutoregressiveWrapper, Decoder, Encoder, TransformerWrapper

V = 17
LAYERS = dict(dim=16, depth=2, heads=2, attn_dim_head=8)


def model(**layers) -> TransformerWrapper:
    torch.manual_seed(0)
    net = TransformerWrapper(
        num_tokens=V,
        max_seq_len=32,
        add_continuous_pred_head=True,
        attn_layers=Decoder(**{**LAYERS, **layers}),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.double()


def tokens(b: int = 3, n: int = 9) -> torch.Tensor:
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(1))


def manual_loss(net, x, lens=None, weight=0.1):
    """CE of the next token + weight * mean L1(head(h_i), embedding row of x_{i+1}) over the
    pairs whose next input is real; the last input has no target (its embedding is not in the
    forward pass of the inputs x[:, :-1])."""
    logits, h = net(x[:, :-1], return_logits_and_embeddings=True)
    target = x[:, 1:].clone()
    if lens is not None:
        target[torch.arange(x.shape[1] - 1) >= (lens[:, None] - 1)] = -100
    ce = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100)
    pred = net.to_next_embed_pred(h)[:, :-1]  # positions 0 .. n-3
    rows = net.token_emb.weight[x[:, 1:-1]].detach()  # inputs of positions 1 .. n-2
    err = (pred - rows).abs().mean(-1)
    valid = target[:, :-1] != -100
    return ce + weight * err[valid].mean()


def test_loss_is_cross_entropy_plus_weighted_l1_to_the_next_embedding():
    net = model(rotary_pos_emb=True)  # no absolute positions: the stack input is the table row
    x = tokens()
    loss = AutoregressiveWrapper(net, next_embed_loss_weight=0.3)(x)
    torch.testing.assert_close(loss, manual_loss(net, x, weight=0.3), rtol=1e-12, atol=1e-12)


def test_padded_targets_are_excluded():
    net = model(rotary_pos_emb=True)
    x, lens = tokens(), torch.tensor([9, 5, 3])
    loss = AutoregressiveWrapper(net)(x, lens=lens)
    torch.testing.assert_close(loss, manual_loss(net, x, lens), rtol=1e-12, atol=1e-12)


def test_target_is_detached():
    net = model(rotary_pos_emb=True)
    x = tokens()
    AutoregressiveWrapper(net, next_embed_loss_weight=5.0)(x).backward()
    ours = net.token_emb.weight.grad.clone()
    net.zero_grad()
    manual_loss(net, x, weight=5.0).backward()
    torch.testing.assert_close(ours, net.token_emb.weight.grad, rtol=1e-12, atol=1e-12)


def test_weight_zero_and_no_head_give_plain_cross_entropy():
    net = model()
    x = tokens()
    plain = F.cross_entropy(net(x[:, :-1]).transpose(1, 2), x[:, 1:])
    torch.testing.assert_close(AutoregressiveWrapper(net, next_embed_loss_weight=0.0)(x), plain)
    loss, (logits, _) = AutoregressiveWrapper(net, next_embed_loss_weight=0.0)(
        x, return_outputs=True
    )
    assert logits.shape == (3, 8, V)


def test_inputs_returned_are_the_stack_input():
    """With absolute positions the stack input is table row + position embedding."""
    net = model()
    x = tokens()
    logits, (pred, inputs) = net(x, return_next_embed_pred=True)
    torch.testing.assert_close(logits, net(x))
    expected = net.token_emb(x) + net.pos_emb(torch.arange(x.shape[1]))
    torch.testing.assert_close(inputs, expected)
    torch.testing.assert_close(pred, net.to_next_embed_pred(net(x, return_embeddings=True)))


def test_equals_x_transformers_on_identical_weights():
    pytest.importorskip("x_transformers")
    from xt_pairs import token_pair

    ours, theirs = token_pair(
        "Decoder", num_tokens=V, max_seq_len=32, add_continuous_pred_head=True, layers=LAYERS
    )
    ours, theirs = ours.double(), theirs.double()
    x = tokens()
    out, (pred, inputs) = ours(x, return_next_embed_pred=True)
    ref_out, (ref_pred, ref_inputs) = theirs(x, return_next_embed_pred=True)
    torch.testing.assert_close(inputs, ref_inputs, rtol=1e-12, atol=1e-12)
    # x-transformers' stack keeps float32 steps in a float64 model: its plain logits (no head)
    # differ from x_attn's by ~1e-7 as well
    for a, b in ((out, ref_out), (pred, ref_pred)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_bad_use():
    plain = TransformerWrapper(num_tokens=V, max_seq_len=8, attn_layers=Decoder(**LAYERS))
    with pytest.raises(ValueError, match="add_continuous_pred_head=True"):
        plain(tokens(1, 4), return_next_embed_pred=True)
    pooled = TransformerWrapper(
        num_tokens=V,
        max_seq_len=8,
        average_pool_embed=True,
        add_continuous_pred_head=True,
        attn_layers=Encoder(**LAYERS),
    )
    with pytest.raises(ValueError, match="pools"):
        pooled(tokens(1, 4), return_next_embed_pred=True)
    with pytest.raises(ValueError, match="next_embed_loss_weight"):
        AutoregressiveWrapper(model(), next_embed_loss_weight=-1.0)
