"""Linformer (arXiv 2006.04768) against the paper's formula, float64.

The reference is written here: softmax(Q (E K)^T / sqrt(d)) (F V) with K, V the layer's own
projections, padded rows zeroed before E and F, and shorter inputs zero-padded to the fixed
length (the paper). Identity projections (k = n, E = F = I) give full attention exactly.

Shape legend: b batch, h heads, n positions, s slots, d head dim.
"""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from reference import reference_attention
from torch import Tensor

from x_attn import Attention, Decoder, Encoder

N, DIM, HEADS, DH = 8, 16, 2, 8


def rand(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def layer(**flags) -> Attention:
    torch.manual_seed(0)
    opts = dict(linformer=True, linformer_k=4, linformer_max_seq_len=N)
    return Attention(DIM, heads=HEADS, dim_head=DH, **{**opts, **flags}).double().eval()


def by_formula(attn: Attention, x: Tensor, real: Tensor | None = None) -> Tensor:
    """The paper's layer, from the module's weights, with x zero-padded to the fixed length."""
    proj, lin = attn.proj, attn.linformer
    split = "b n (h d) -> b h n d"
    q = rearrange(proj.to_q(x), split, h=HEADS)
    k = rearrange(proj.to_k(x), split, h=proj.k_heads)
    v = rearrange(proj.to_v(x), split, h=proj.v_heads)
    if real is not None:
        k, v = k * real[:, None, :, None], v * real[:, None, :, None]
    pad = lin.max_len - x.shape[1]
    k = torch.nn.functional.pad(k, (0, 0, 0, pad))
    v = torch.nn.functional.pad(v, (0, 0, 0, pad))
    e = lin.proj_k
    f = e if lin.proj_v is None else lin.proj_v
    ks, vs = torch.einsum("hsn,bhnd->bhsd", e, k), torch.einsum("hsn,bhnd->bhsd", f, v)
    out = reference_attention(q, ks, vs, scale=DH**-0.5)
    return rearrange(out, "b h n d -> b n (h d)") @ attn.to_out.weight.T


def test_identity_projections_reproduce_full_attention() -> None:
    attn = layer(linformer_k=N)
    with torch.no_grad():
        attn.linformer.proj_k.copy_(torch.eye(N).expand_as(attn.linformer.proj_k))
        attn.linformer.proj_v.copy_(torch.eye(N).expand_as(attn.linformer.proj_v))
    full = Attention(DIM, heads=HEADS, dim_head=DH).double().eval()
    full.load_state_dict({k: v for k, v in attn.state_dict().items() if "linformer" not in k})
    x = rand(2, N, DIM, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), full(x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("share", ["none", "headwise", "kv"])
@pytest.mark.parametrize("n", [N, 5])
def test_matches_the_formula_with_padding(share: str, n: int) -> None:
    attn = layer(linformer_share=share)
    x = rand(2, n, DIM, seed=2)
    real = torch.ones(2, n, dtype=torch.bool)
    real[0, 1] = False
    real[1, -2:] = False
    with torch.no_grad():
        got = attn(x, mask=real)
        expected = by_formula(attn, x, real.double())
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
        changed = torch.where(real[..., None], x, rand(2, n, DIM, seed=3))
        again = attn(changed, mask=real)  # real rows only: a padded row reads its own query
        torch.testing.assert_close(again[real], got[real], atol=1e-12, rtol=0)


def test_parameter_counts_per_sharing_mode() -> None:
    def count(share: str, **extra) -> int:
        return sum(
            p.numel()
            for n, p in layer(linformer_share=share, **extra).named_parameters()
            if "linformer" in n
        )

    assert count("none") == 2 * HEADS * 4 * N
    assert count("none", kv_heads=1) == 2 * 4 * N
    assert count("headwise") == 2 * 4 * N
    assert count("kv") == 4 * N


def test_not_causal_by_construction() -> None:
    """The reason it is refused on a Decoder: the last key changes the first query's output."""
    attn = layer()
    x = rand(1, N, DIM, seed=4)
    y = x.clone()
    y[:, -1] += 1.0
    with torch.no_grad():
        assert (attn(x)[:, 0] - attn(y)[:, 0]).abs().max() > 1e-6
        with pytest.raises(ValueError, match="causal"):
            attn(x, causal=True)


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (dict(attn_linformer=True, attn_linformer_max_seq_len=8, attn_linformer_k=4), "causal"),
    ],
)
def test_decoder_refuses(flags: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Decoder(dim=16, depth=1, heads=2, **flags)


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (dict(attn_linformer=True), "attn_linformer_max_seq_len"),
        (dict(attn_linformer=True, attn_linformer_max_seq_len=4), "attn_linformer_k=256"),
        (dict(attn_linformer_k=4), "attn_linformer=True"),
        (dict(attn_linformer_share="kv"), "attn_linformer=True"),
        (
            dict(
                attn_linformer=True,
                attn_linformer_max_seq_len=8,
                attn_linformer_k=4,
                attn_linformer_share="layerwise",
            ),
            "layerwise",
        ),
        (
            dict(
                attn_linformer=True,
                attn_linformer_max_seq_len=8,
                attn_linformer_k=4,
                rel_pos_bias=True,
            ),
            "rel_pos_bias",
        ),
        (dict(cross_attend=True, cross_attn_linformer=True), "cross_attn_linformer"),
    ],
)
def test_encoder_refusals_name_the_flags(flags: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Encoder(dim=16, depth=1, heads=2, **flags)


def test_call_refusals() -> None:
    attn = layer()
    with pytest.raises(ValueError, match="attn_linformer_max_seq_len=8"):
        attn(rand(1, N + 1, DIM, seed=5))
    with pytest.raises(ValueError, match="attn_mask"):
        attn(rand(1, 4, DIM, seed=5), attn_mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="cache"):
        attn(rand(1, 4, DIM, seed=5), cache=attn.new_cache_entry())


def test_padded_keys_are_zeroed_before_the_projection() -> None:
    """Keys of padded rows need not be zero (positions, value mixes): the stage zeroes them."""
    from x_attn.masks.spec import AttnMask, Span

    lin = layer().linformer
    k, v = rand(2, HEADS, 6, DH, seed=6), rand(2, HEADS, 6, DH, seed=7)
    real = torch.ones(2, 6, dtype=torch.bool)
    real[0, 2] = False
    mask = AttnMask(Span(0, 6), Span(0, 6), key_padding=real)
    ks, vs, projected, _ = lin(k, v, mask, None)
    keep = real[:, None, :, None]
    expected_k = torch.einsum("hsn,bhnd->bhsd", lin.proj_k[..., :6], k * keep)
    torch.testing.assert_close(ks, expected_k, atol=1e-12, rtol=0)
    other_k = torch.where(keep, k, rand(2, HEADS, 6, DH, seed=8))
    torch.testing.assert_close(lin(other_k, v, mask, None)[0], ks, atol=1e-12, rtol=0)
    assert projected.free == 4 and len(projected.k) == 0  # slots: keys without position
