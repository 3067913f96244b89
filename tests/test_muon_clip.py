"""QK-clip (MuonClip, arXiv 2507.20534), Muon parameter groups and Attention(dim_out=).

The logit maxima are checked against a naive float64 computation from the layer's weights; the
clip against its formula (a head over tau comes back to exactly tau, the others unchanged).
"""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from reference import reference_attention

from x_attn import Attention, Decoder, Encoder, FeedForward, TransformerWrapper

DIM, HEADS, DH = 16, 4, 8


def naive_head_max(attn: Attention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """(h,) max over allowed pairs of dh^-0.5 q.k, from the weights, in float64."""
    proj = attn.proj
    q = rearrange(x.double() @ proj.to_q.weight.double().T, "b n (h d) -> b h n d", h=proj.heads)
    k = rearrange(x.double() @ proj.to_k.weight.double().T, "b n (h d) -> b h n d", h=proj.k_heads)
    k = k.repeat_interleave(proj.heads // proj.k_heads, dim=1)
    logits = q @ k.transpose(-1, -2) * DH**-0.5
    if causal:
        n = x.shape[1]
        logits = logits.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return logits.amax(dim=(0, 2, 3)).detach()


@pytest.mark.parametrize("kv_heads", [HEADS, 2])
def test_qk_clip_brings_heads_over_tau_to_tau(kv_heads: int) -> None:
    torch.manual_seed(0)
    attn = Attention(DIM, HEADS, causal=True, dim_head=DH, kv_heads=kv_heads)
    x = torch.randn(2, 12, DIM) * 3
    before = naive_head_max(attn, x, causal=True)
    _, found = attn(x, return_intermediates=True)
    torch.testing.assert_close(found_max(found), before.float(), rtol=1e-5, atol=1e-5)
    tau = float(before.sort().values[1])  # two heads over tau, at least one under
    k_before = attn.proj.to_k.weight.clone()
    gamma = attn.qk_clip_(found, tau=tau)
    torch.testing.assert_close(gamma.double(), (tau / before).clamp(max=1.0).float().double())
    after = naive_head_max(attn, x, causal=True)
    torch.testing.assert_close(after, before.clamp(max=tau), rtol=1e-5, atol=1e-5)
    if kv_heads != HEADS:  # shared key heads: the factor goes on the queries only
        assert torch.equal(attn.proj.to_k.weight, k_before)


def found_max(found) -> torch.Tensor:
    from x_attn.attention.muon_clip import qk_logit_max

    return qk_logit_max(found.inputs)


def test_qk_clip_from_logits_tensor() -> None:
    attn = Attention(DIM, 2, dim_head=DH)
    logits = torch.full((1, 2, 3, 3), 1.0)
    logits[0, 0, 1, 2] = 400.0
    q_before = attn.proj.to_q.weight.clone()
    gamma = attn.qk_clip_(logits, tau=100)
    torch.testing.assert_close(gamma, torch.tensor([0.25, 1.0]))
    torch.testing.assert_close(attn.proj.to_q.weight[:DH], q_before[:DH] * 0.5)
    assert torch.equal(attn.proj.to_q.weight[DH:], q_before[DH:])


def test_qk_clip_through_wrapper_with_rotary() -> None:
    torch.manual_seed(1)
    model = TransformerWrapper(
        num_tokens=20,
        max_seq_len=16,
        attn_layers=Decoder(dim=DIM, depth=2, heads=HEADS, attn_dim_head=DH, rotary_pos_emb=True),
    )
    seq = torch.randint(0, 20, (2, 10))
    _, inter = model(seq, return_intermediates=True)
    maxima = [found_max(found) for found in inter.attn_intermediates]
    tau = float(torch.stack(maxima).median())
    model.attn_qk_clip_(inter, tau=tau)
    _, full = model(seq, return_intermediates=True)  # the first layer sees the same input
    torch.testing.assert_close(
        found_max(full.attn_intermediates[0]), maxima[0].clamp(max=tau), rtol=1e-4, atol=1e-4
    )


def test_qk_clip_refusals() -> None:
    attn = Attention(DIM, HEADS, dim_head=DH, qk_norm=True)
    _, found = attn(torch.randn(1, 4, DIM), return_intermediates=True)
    with pytest.raises(ValueError, match="normalises its heads"):
        attn.qk_clip_(found)
    plain = Attention(DIM, HEADS, dim_head=DH)
    with pytest.raises(ValueError, match="tau"):
        plain.qk_clip_(found, tau=0)
    with pytest.raises(ValueError, match="return_hiddens=True"):
        Decoder(dim=DIM, depth=1).attn_qk_clip_(object())


def test_muon_parameters_are_value_output_and_ff_matrices() -> None:
    attn = Attention(DIM, HEADS, dim_head=DH, dim_out=12)
    assert [id(p) for p in attn.muon_parameters()] == [
        id(attn.proj.to_v.weight),
        id(attn.to_out.weight),
    ]
    ff = FeedForward(DIM)
    assert [id(p) for p in ff.muon_parameters()] == [id(ff.proj_in.weight), id(ff.proj_out.weight)]
    enc = Encoder(dim=DIM, depth=3)
    assert len(enc.muon_parameters()) == 3 * (2 + 2)
    assert all(p.ndim == 2 for p in enc.muon_parameters())


def test_dim_out_matches_reference() -> None:
    torch.manual_seed(2)
    attn = Attention(DIM, 2, dim_head=DH, dim_out=5, causal=True)
    x = torch.randn(2, 6, DIM)
    proj = attn.proj
    q, k, v = (
        rearrange(x.double() @ w.weight.double().T, "b n (h d) -> b h n d", h=2)
        for w in (proj.to_q, proj.to_k, proj.to_v)
    )
    heads = reference_attention(q, k, v, causal=True)
    expected = rearrange(heads, "b h n d -> b n (h d)") @ attn.to_out.weight.double().T
    torch.testing.assert_close(attn(x).double(), expected, rtol=1e-5, atol=1e-5)
    assert Attention(DIM, 2, dim_head=DH, dim_out=5, on_attn=True)(x).shape == (2, 6, 5)


def test_dim_out_refused_in_stack_and_checked() -> None:
    with pytest.raises(ValueError, match="residual stream of width dim=16"):
        Decoder(dim=DIM, depth=1, attn_dim_out=8)
    with pytest.raises(ValueError, match="dim_out"):
        Attention(DIM, dim_out=0)
