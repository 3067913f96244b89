"""checkpoint_layers: per-layer activation checkpointing (torch.utils.checkpoint).

A checkpointed layer keeps fewer activations for backward and recomputes them, so the
gradients must equal the plain model's exactly (same weights, dropout 0 or replayed).
"""

from __future__ import annotations

import pytest
import torch

from x_attn import Decoder, TransformerWrapper

DIMS = dict(dim=16, depth=2, heads=2, attn_dim_head=8)


def _model(seed: int = 0, **flags) -> TransformerWrapper:
    torch.manual_seed(seed)
    net = TransformerWrapper(
        num_tokens=24, max_seq_len=16, attn_layers=Decoder(**{**DIMS, **flags})
    )
    return net.double().train()


def _grads(net: TransformerWrapper, ids: torch.Tensor, seed: int = 1) -> tuple:
    torch.manual_seed(seed)  # the same dropout masks in both models
    loss = net(ids).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in net.named_parameters()}


def _saved_bytes(net: TransformerWrapper, ids: torch.Tensor) -> int:
    """Bytes autograd keeps for backward during one forward."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(ids).sum()
    return total


IDS = torch.randint(0, 24, (2, 12), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize(
    "flags",
    [
        {},
        {"rotary_pos_emb": True, "attn_kv_heads": 1},
        {"attn_dropout": 0.2, "ff_dropout": 0.2},  # recompute replays the dropout masks
        {"residual_attn": True, "add_value_residual": True},  # state carried between layers
    ],
)
def test_checkpointed_gradients_equal_plain(flags: dict) -> None:
    plain_loss, plain = _grads(_model(**flags), IDS)
    ckpt_loss, ckpt = _grads(_model(checkpoint_layers=True, **flags), IDS)
    assert torch.equal(plain_loss, ckpt_loss)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        assert torch.equal(plain[name], ckpt[name]), name


def test_checkpointing_keeps_fewer_activations() -> None:
    plain = _saved_bytes(_model(), IDS)
    every = _saved_bytes(_model(checkpoint_layers=True), IDS)
    some = _saved_bytes(_model(checkpoint_layers=(True, False, False, False)), IDS)
    assert every < some < plain
    net = _model(checkpoint_layers=True).eval()  # eval / no_grad: nothing to recompute
    with torch.no_grad():
        assert torch.equal(net(IDS), _model().eval()(IDS))


@pytest.mark.parametrize(
    "value, error, match",
    [
        (1, TypeError, "'checkpoint_layers' takes True/False or one bool per layer .* got int"),
        ((True, "yes", True, True), TypeError, "got str 'yes'"),
        ((True, False), ValueError, "'checkpoint_layers' has 2 values, but the stack builds 4"),
    ],
)
def test_checkpoint_layers_refuses_bad_values(value, error, match) -> None:
    with pytest.raises(error, match=match):
        Decoder(**DIMS, checkpoint_layers=value)


def test_checkpoint_layers_refused_with_reversible_and_with_a_cache() -> None:
    with pytest.raises(ValueError, match="reversible=True .*checkpoint_layers"):
        Decoder(**DIMS, reversible=True, checkpoint_layers=True)
    net = _model(checkpoint_layers=True)
    with pytest.raises(ValueError, match="checkpoint_layers .* KV cache twice"):
        net(IDS, return_cache=True)
