"""Linear attention ("Transformers are RNNs", arXiv 2006.16236) against the paper's formulas.

References are written here from the paper: the recurrent (RNN) form S <- S + phi(k) v^T,
z <- z + phi(k), y = phi(q)^T S / phi(q)^T z, and the explicitly normalised kernel matrix for
the non-causal layer. float64, tiny shapes.

Shape legend: b batch, h heads, n positions, m feature dim, d value dim.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from x_attn import Attention, Decoder, Encoder, TransformerWrapper
from x_attn.cache.state import StateEntry
from x_attn.kernels import linear
from x_attn.kernels.inputs import AttnInputs
from x_attn.kernels.linear import linear_attention
from x_attn.masks.causal import CAUSAL
from x_attn.masks.spec import AttnMask, Span

ATOL = 1e-12


def phi(x: Tensor) -> Tensor:
    return torch.where(x > 0, x + 1, torch.exp(x))  # elu(x) + 1, written out


def recurrent(q: Tensor, k: Tensor, v: Tensor, real: Tensor | None = None) -> Tensor:
    """The paper's RNN form, one position at a time; ``real`` (b, n) drops padded keys."""
    b, h, n, m = q.shape
    s = q.new_zeros(b, h, m, v.shape[-1])
    z = q.new_zeros(b, h, m)
    out = []
    for t in range(n):
        kt, vt = k[:, :, t], v[:, :, t]
        if real is not None:
            keep = real[:, t].to(q.dtype)[:, None, None]
            kt, vt = kt * keep, vt * keep
        s = s + kt.unsqueeze(-1) * vt.unsqueeze(-2)
        z = z + kt
        num = torch.einsum("bhm,bhmd->bhd", q[:, :, t], s)
        den = torch.einsum("bhm,bhm->bh", q[:, :, t], z).unsqueeze(-1)
        out.append(num / den)
    return torch.stack(out, dim=2)


def features(b=2, h=2, n=13, m=4, d=3, seed=0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    q, k = (phi(torch.randn(b, h, n, m, generator=g, dtype=torch.float64)) for _ in range(2))
    return q, k, torch.randn(b, h, n, d, generator=g, dtype=torch.float64)


def run(q, k, v, causal: bool, chunk: int = 4, padding: Tensor | None = None) -> Tensor:
    n = q.shape[-2]
    spec = AttnMask(Span(0, n), Span(0, n), (CAUSAL,) if causal else (), padding)
    return linear_attention(AttnInputs(q, k, v, spec=spec), StateEntry(chunk=chunk))


@pytest.mark.parametrize("chunk", [1, 3, 4, 13, 64])
def test_chunkwise_causal_equals_recurrent_form(chunk: int) -> None:
    q, k, v = features(n=13)  # 13 is no multiple of 3, 4 or 64
    torch.testing.assert_close(run(q, k, v, True, chunk), recurrent(q, k, v), atol=ATOL, rtol=0)


@pytest.mark.parametrize("span", [1, 4, 8])
def test_causal_scan_in_spans_equals_recurrent_form(monkeypatch, span: int) -> None:
    """The sums carried from span to span (spans of 3, 3 or 6 positions here, the last one
    cut short) give the recurrent form's values and gradients, with padded keys too."""
    monkeypatch.setattr(linear, "SPAN", span)
    q, k, v = (t.requires_grad_() for t in features(n=13))
    real = torch.ones(2, 13, dtype=torch.bool)
    real[0, 4:7] = False
    got = run(q, k, v, True, 3, padding=real)
    want = recurrent(q, k, v, real)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    for a, b in zip(
        torch.autograd.grad(got.sum(), (q, k, v)), torch.autograd.grad(want.sum(), (q, k, v))
    ):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_non_causal_equals_normalised_kernel_matrix() -> None:
    q, k, v = features()
    a = q @ k.transpose(-1, -2)
    expected = (a / a.sum(-1, keepdim=True)) @ v
    torch.testing.assert_close(run(q, k, v, False), expected, atol=ATOL, rtol=0)
    # the last causal row sees every key: it equals the non-causal row
    torch.testing.assert_close(
        run(q, k, v, True)[..., -1, :], expected[..., -1, :], atol=ATOL, rtol=0
    )


def test_padding_is_removed_in_feature_space() -> None:
    q, k, v = features(n=9)
    real = torch.ones(2, 9, dtype=torch.bool)
    real[0, 2], real[0, 7:], real[1, :3] = False, False, True
    real[1, 4] = False
    for causal in (False, True):
        got = run(q, k, v, causal, 4, real)
        if causal:
            expected = recurrent(q, k, v, real)
        else:
            a = (q @ k.transpose(-1, -2)) * real[:, None, None, :]
            expected = (a / a.sum(-1, keepdim=True)) @ v
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_a_zero_key_is_not_a_masked_key() -> None:
    """phi(0) = 1: a layer fed zero rows for padded tokens must still drop them itself."""
    torch.manual_seed(0)
    layer = Attention(8, heads=2, dim_head=4, linear_attn=True).double().eval()
    x = torch.randn(1, 6, 8, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, True, False, False]])
    with torch.no_grad():
        padded = layer(x, mask=mask)[:, :4]
        alone = layer(x[:, :4])
        zero_rows = layer(torch.cat((x[:, :4], torch.zeros(1, 2, 8)), 1))[:, :4]
    torch.testing.assert_close(padded, alone, atol=ATOL, rtol=0)
    assert (zero_rows - alone).abs().max() > 1e-3  # zero rows, unmasked, do count


def test_layer_equals_hand_computed_linear_attention() -> None:
    """One causal layer: phi(x W_q), phi(x W_k), x W_v through the recurrent form, no scale."""
    torch.manual_seed(1)
    layer = Attention(8, heads=2, causal=True, dim_head=4, linear_attn=True).double().eval()
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    inner = layer.proj.inner

    def heads(t: Tensor) -> Tensor:
        return t.view(2, 11, 2, 4).transpose(1, 2)

    q, k = phi(heads(x @ inner.to_q.weight.T)), phi(heads(x @ inner.to_k.weight.T))
    v = heads(x @ inner.to_v.weight.T)
    out = recurrent(q, k, v).transpose(1, 2).reshape(2, 11, 8)
    expected = layer.to_out(out, x)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, atol=ATOL, rtol=0)


def decoder(**extra) -> TransformerWrapper:
    torch.manual_seed(0)
    layers = Decoder(dim=16, depth=2, heads=2, attn_dim_head=8, attn_linear_attn=True, **extra)
    return TransformerWrapper(num_tokens=20, max_seq_len=32, attn_layers=layers).double().eval()


def test_decoding_state_does_not_grow_and_forks_are_values() -> None:
    net = decoder(attn_linear_attn_chunk=5)
    x = torch.randint(0, 20, (2, 17), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = net(x)
        logits, cache = net(x[:, :7], return_cache=True)
        shapes = [tuple(t.shape) for e in cache.entries for t in e.state]
        steps = [logits]
        branch = None
        for t in range(7, 17):
            if t == 9:
                branch = cache
            logits, cache = net(x[:, t : t + 1], cache=cache, return_cache=True)
            steps.append(logits)
            assert [tuple(t.shape) for e in cache.entries for t in e.state] == shapes
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-10, rtol=0)
        # the cache at position 9 still continues position 9 (the loop did not write into it)
        again, _ = net(x[:, 9:10], cache=branch, return_cache=True)
    torch.testing.assert_close(again[:, -1], full[:, 9], atol=1e-10, rtol=0)
    assert all(isinstance(e, StateEntry) for e in cache.entries)


def test_gradients_match_the_recurrent_form() -> None:
    q, k, v = (t.requires_grad_() for t in features(n=7, b=1))
    torch.autograd.gradcheck(lambda a, b, c: run(a, b, c, True, 3), (q, k, v))
    got = torch.autograd.grad(run(q, k, v, True, 3).sum(), (q, k, v))
    want = torch.autograd.grad(recurrent(q, k, v).sum(), (q, k, v))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_half_precision_is_finite() -> None:
    torch.manual_seed(0)
    layer = Attention(16, heads=2, causal=True, dim_head=8, linear_attn=True).bfloat16()
    x = 30 * torch.randn(2, 40, 16).bfloat16()
    assert torch.isfinite(layer(x).float()).all()


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        ({"alibi_pos_bias": True}, "alibi_pos_bias"),
        ({"rel_pos_bias": True}, "rel_pos_bias"),
        ({"attn_dropout": 0.1}, "attn_dropout"),
        ({"attn_flash": True}, "attn_flash=True"),
        ({"attn_sparse_topk": 2}, "attn_sparse_topk"),
        ({"attn_num_mem_kv": 2}, "attn_num_mem_kv"),
    ],
)
def test_refused_combinations_name_the_flags(flags: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        decoder(**flags)
    assert "attn_linear_attn" in str(err.value) or "linear" in str(err.value)


def test_bad_chunk_and_chunk_without_linear_attention() -> None:
    with pytest.raises(ValueError, match="attn_linear_attn_chunk"):
        decoder(attn_linear_attn_chunk=0)
    with pytest.raises(ValueError, match="attn_linear_attn=True"):
        Encoder(dim=16, depth=1, attn_linear_attn_chunk=3)


def test_attn_mask_and_sliding_past_max_seq_len_are_refused() -> None:
    net = decoder()
    x = torch.randint(0, 20, (1, 6))
    with pytest.raises(ValueError, match="attn_mask"):
        net(x, attn_mask=torch.ones(6, 6, dtype=torch.bool).tril())
    _, cache = net(x, return_cache=True)
    with pytest.raises(ValueError, match="linear attention keeps their sum"):
        cache.slide(4, [0, 1])


def test_encoder_padding_and_maps() -> None:
    torch.manual_seed(0)
    layers = Encoder(dim=16, depth=1, heads=2, attn_dim_head=8, attn_linear_attn=True)
    net = TransformerWrapper(num_tokens=20, max_seq_len=16, attn_layers=layers).double().eval()
    x = torch.randint(0, 20, (2, 7))
    mask = torch.tensor([[True] * 5 + [False] * 2, [False] * 3 + [True] * 4])
    with torch.no_grad():
        plain = net(x, mask=mask)
        logits, maps = net(x, mask=mask, return_attn=True)
    torch.testing.assert_close(logits, plain, atol=1e-12, rtol=0)
    (attn,) = maps
    assert (attn[0, :, :, 5:] == 0).all() and (attn[1, :, :, :3] == 0).all()
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 7, dtype=attn.dtype))


@pytest.mark.parametrize("flag", ["linear_attn", "performer"])
def test_qk_transforms_act_inside_the_feature_map(flag: str) -> None:
    """QK-RMSNorm's gains reach the queries and keys under phi (they were once skipped)."""
    torch.manual_seed(0)
    layer = Attention(16, heads=2, dim_head=8, qk_rmsnorm=True, **{flag: True}).double().eval()
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    with torch.no_grad():
        before = layer(x)
        for p in layer.qk_rmsnorm.parameters():  # gains start at 0: move them
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1), dtype=p.dtype))
        after = layer(x)
    assert (before - after).abs().max() > 1e-6
