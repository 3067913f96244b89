"""Cog attention (arXiv 2411.07176) against the signed-exponential formula in float64.

Weights are sign(s) exp(|s|) / sum over allowed keys of exp(|s_j|): written out key by key
here, with the causal mask, and with a learned sink as one more logit whose value is zero.

Shape legend: b batch, h heads, i queries, j keys, d head dim.
"""

from __future__ import annotations

import pytest
import torch
from test_attention_features import DIM_HEAD, close, hand_qkv, inputs, make, project_out

from x_attn import Decoder


def signed_weights(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """(..., j) logits, (..., j) bool -> sign(s) exp(|s|) / sum_allowed exp(|s|), 0 if hidden."""
    magnitude = torch.where(allowed, logits.abs().exp(), torch.zeros_like(logits))
    return logits.sign() * magnitude / magnitude.sum(-1, keepdim=True)


@pytest.mark.parametrize("causal", [False, True])
def test_weights_are_signed_exponentials_normalised_by_magnitude(causal):
    attn = make(cog_signed=True, causal=causal).eval()
    x = inputs(spread=2.0)
    q, k, v = hand_qkv(attn, x)
    logits = torch.einsum("bhid,bhjd->bhij", q, k) * DIM_HEAD**-0.5
    n = logits.shape[-1]
    allowed = torch.ones(n, n, dtype=torch.bool)
    allowed = allowed.tril() if causal else allowed
    weights = signed_weights(logits, allowed.expand_as(logits))
    assert (weights < 0).any()  # negative weights do occur
    close(attn(x), project_out(attn, weights @ v))
    _, inter = attn(x, return_attn=True)
    close(inter.probs, weights)
    close(inter.probs.abs().sum(-1), torch.ones_like(inter.probs[..., 0]))


def test_a_learned_sink_takes_its_share_by_magnitude():
    attn = make(cog_signed=True, head_learned_sink=True, causal=True).eval()
    with torch.no_grad():
        attn.head_learned_sink.sink.copy_(torch.tensor([-1.5, 0.7], dtype=torch.float64))
    x = inputs()
    q, k, v = hand_qkv(attn, x)
    logits = torch.einsum("bhid,bhjd->bhij", q, k) * DIM_HEAD**-0.5
    sink = attn.head_learned_sink.sink.view(1, -1, 1, 1).expand(*logits.shape[:3], 1)
    n = logits.shape[-1]
    allowed = torch.cat((torch.ones(n, 1, dtype=torch.bool), torch.ones(n, n).tril().bool()), -1)
    weights = signed_weights(
        torch.cat((sink, logits), -1), allowed.expand(*logits.shape[:2], -1, -1)
    )
    close(attn(x), project_out(attn, weights[..., 1:] @ v))


def test_refused_with_another_normaliser_and_with_flash():
    with pytest.raises(ValueError, match="attn_use_entmax15.*attn_cog_signed|normalizer"):
        Decoder(dim=16, depth=1, attn_cog_signed=True, attn_use_entmax15=True)
    with pytest.raises(ValueError, match="attn_cog_signed"):
        Decoder(dim=16, depth=1, attn_cog_signed=True, attn_flash=True)
