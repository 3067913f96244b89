"""Stochastic (Gumbel-softmax) attention, x-transformers' gumbel_softmax: the deterministic parts
against formulas written here (eval = the noise-free limit, the training sample against its own
noise, straight-through gradients, the Gumbel-max property as frequencies, log-probabilities).

Shape legend: b batch, n tokens, h heads, i queries, j keys, d model dim, dh head dim.
"""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from reference import reference_attention

from x_attn import Attention, Decoder, log_prob_from_hard_attend
from x_attn.attention.features.gumbel import GumbelSoftmax

B, N, D, H, DH = 2, 6, 16, 2, 8


def _qkv(layer: Attention, x: torch.Tensor):
    proj = layer.proj
    return (
        rearrange(x @ w.weight.T, "b n (h e) -> b h n e", h=H)
        for w in (proj.to_q, proj.to_k, proj.to_v)
    )


@pytest.mark.parametrize("temp", [1.0, 0.5])
def test_eval_soft_is_softmax_at_temperature(temp: float) -> None:
    torch.manual_seed(0)
    layer = (
        Attention(
            D,
            H,
            causal=True,
            dim_head=DH,
            gumbel_softmax=True,
            gumbel_softmax_hard=False,
            gumbel_softmax_temp=temp,
        )
        .double()
        .eval()
    )
    x = torch.randn(B, N, D, dtype=torch.float64)
    q, k, v = _qkv(layer, x)
    heads = reference_attention(q, k, v, causal=True, scale=DH**-0.5 / temp)
    expected = rearrange(heads, "b h n e -> b n (h e)") @ layer.to_out.weight.T
    torch.testing.assert_close(layer(x), expected, atol=1e-12, rtol=0)


def test_eval_hard_reads_the_argmax_key() -> None:
    torch.manual_seed(1)
    layer = Attention(D, H, causal=True, dim_head=DH, gumbel_softmax=True).double().eval()
    x = torch.randn(B, N, D, dtype=torch.float64)
    q, k, v = _qkv(layer, x)
    logits = (q @ k.transpose(-1, -2)).masked_fill(
        ~torch.ones(N, N, dtype=torch.bool).tril(), float("-inf")
    )
    picked = v.gather(2, logits.argmax(-1, keepdim=True).expand(-1, -1, -1, DH))
    expected = rearrange(picked, "b h n e -> b n (h e)") @ layer.to_out.weight.T
    torch.testing.assert_close(layer(x), expected, atol=1e-12, rtol=0)


def test_training_sample_is_its_noise_and_straight_through() -> None:
    sim = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    module = GumbelSoftmax(temp=0.7, hard=True).train()
    torch.manual_seed(5)
    out = module(sim)
    torch.manual_seed(5)
    noise = -torch.empty_like(sim).exponential_().log()  # Gumbel(0, 1)
    soft = ((sim + noise) / 0.7).softmax(-1)
    hard = torch.nn.functional.one_hot(soft.argmax(-1), 5).double()
    torch.testing.assert_close(out.detach(), hard, atol=1e-12, rtol=0)
    w = torch.randn(3, 5, dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * w).sum(), sim)
    (soft_grad,) = torch.autograd.grad((soft * w).sum(), sim)  # straight-through: soft's gradient
    torch.testing.assert_close(grad, soft_grad, atol=1e-12, rtol=0)


def test_hard_samples_follow_the_softmax() -> None:
    """Gumbel-max: the argmax of s + g is drawn with probability softmax(s)."""
    torch.manual_seed(2)
    sim = torch.tensor([1.0, 0.0, -1.0, 2.0]).expand(20000, 4)
    counts = GumbelSoftmax(temp=1.0, hard=True).train()(sim).sum(0) / 20000
    torch.testing.assert_close(counts, sim[0].softmax(-1), atol=0.015, rtol=0)


def test_log_prob_of_the_attended_key_and_masked_keys_never_drawn() -> None:
    torch.manual_seed(3)
    layer = Attention(D, H, causal=True, dim_head=DH, gumbel_softmax=True).double().train()
    x = torch.randn(B, N, D, dtype=torch.float64)
    _, found = layer(x, return_intermediates=True)
    probs = found.probs
    assert probs.triu(1).abs().max() == 0  # no future key drawn
    q, k, _ = _qkv(layer, x)
    logits = (q @ k.transpose(-1, -2) * DH**-0.5).masked_fill(
        ~torch.ones(N, N, dtype=torch.bool).tril(), float("-inf")
    )
    expected = logits.log_softmax(-1).gather(-1, probs.argmax(-1, keepdim=True)).squeeze(-1)
    log_probs = log_prob_from_hard_attend(found)
    assert log_probs.shape == (B, H, N)
    torch.testing.assert_close(log_probs, expected, atol=1e-12, rtol=0)
    assert torch.equal(log_probs[..., 0], torch.zeros(B, H, dtype=torch.float64))  # one key


def test_refusals() -> None:
    with pytest.raises(ValueError, match="attn_gumbel_softmax_temp must be a number > 0"):
        Decoder(dim=D, depth=1, attn_gumbel_softmax=True, attn_gumbel_softmax_temp=0)
    with pytest.raises(ValueError, match="attn_use_entmax15 and attn_gumbel_softmax both replace"):
        Decoder(dim=D, depth=1, attn_gumbel_softmax=True, attn_use_entmax15=True)
    with pytest.raises(ValueError, match="return_intermediates=True"):
        log_prob_from_hard_attend(object())
