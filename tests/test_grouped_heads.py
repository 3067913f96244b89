"""Grouped-query (arXiv 2305.13245) and multi-query (arXiv 1911.02150) attention: the flags
``attn_kv_heads`` / ``attn_one_kv_head``, their head-to-group convention, the cache they keep,
the mean-pooling conversion of multi-head weights, and their refusals.

Every expected value is computed here from the layer's weights with explicit per-head loops or
the Hugging Face ``repeat_kv`` layout, in float64.

Shape legend: b batch, n tokens, h query heads, hk key/value heads, g = h / hk, dh head dim,
d model dim.
"""

from __future__ import annotations

import pytest
import torch
from reference import reference_attention
from torch import Tensor

from x_attn import (
    Attention,
    Decoder,
    Encoder,
    TransformerWrapper,
    XTransformer,
    group_kv_heads,
)
from x_attn.catalog import mechanism
from x_attn.train.measure import tensor_bytes
from x_attn.uptrain import mean_pool_heads

B, N, D, H, DH = 2, 6, 16, 6, 4


def _x(n: int = N, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, n, D, generator=g, dtype=torch.float64)


def _split(t: Tensor, heads: int) -> Tensor:
    """(b, n, heads * dh) -> (b, heads, n, dh)."""
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)


def _repeat_kv_hf(t: Tensor, groups: int) -> Tensor:
    """Hugging Face Llama/Mistral layout: a new axis after the kv heads, expanded, merged.

    (b, hk, n, dh) -> (b, hk * g, n, dh) with head hk_index * g + r = kv head hk_index.
    """
    b, hk, n, dh = t.shape
    return t[:, :, None].expand(b, hk, groups, n, dh).reshape(b, hk * groups, n, dh)


def _layer(**flags) -> Attention:
    torch.manual_seed(0)
    return Attention(D, heads=H, dim_head=DH, causal=True, **flags).double().eval()


@pytest.mark.parametrize("kv_heads", [1, 2, 3])
@pytest.mark.parametrize("flash", [None, False])
def test_query_head_t_reads_kv_head_t_floordiv_group(kv_heads: int, flash) -> None:
    """The layer equals attention over Hugging Face's repeat_kv of its own k/v projections."""
    layer = _layer(kv_heads=kv_heads, flash=flash)
    x = _x()
    proj, g = layer.proj, H // kv_heads
    q = _split(x @ proj.to_q.weight.T, H)
    k, v = (_split(x @ w.T, kv_heads) for w in (proj.to_k.weight, proj.to_v.weight))
    assert k.shape == (B, kv_heads, N, DH)
    out = reference_attention(q, _repeat_kv_hf(k, g), _repeat_kv_hf(v, g), causal=True)
    expected = layer.to_out(out.transpose(1, 2).flatten(2), x)
    torch.testing.assert_close(layer(x), expected, atol=1e-12, rtol=0)
    if kv_heads > 1:  # the tiled layout (head t reads kv head t % hk) is a different model
        tiled = k.repeat(1, g, 1, 1), v.repeat(1, g, 1, 1)
        other = layer.to_out(
            reference_attention(q, *tiled, causal=True).transpose(1, 2).flatten(2), x
        )
        assert (other - expected).abs().max() > 1e-3


def _state_with_tied_groups(grouped: Attention) -> dict[str, Tensor]:
    """An MHA state dict whose k/v heads repeat the grouped layer's, group by group."""
    state = dict(grouped.state_dict())
    g = H // grouped.proj.k_heads
    for part in ("to_k", "to_v"):
        w = state[f"proj.{part}.weight"].unflatten(0, (-1, DH))  # (hk, dh, d)
        state[f"proj.{part}.weight"] = w.repeat_interleave(g, dim=0).flatten(0, 1)
    return state


@pytest.mark.parametrize("kv_heads", [1, 2, 3])
def test_grouped_equals_multi_head_with_k_v_tied_within_groups(kv_heads: int) -> None:
    grouped = _layer(kv_heads=kv_heads)
    mha = _layer()
    mha.load_state_dict(_state_with_tied_groups(grouped))
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[0, 2] = False
    x = _x(seed=1)
    torch.testing.assert_close(grouped(x, mask=mask), mha(x, mask=mask), atol=1e-12, rtol=0)


def test_kv_heads_equal_to_heads_is_multi_head_attention_exactly() -> None:
    mha = _layer()
    same = _layer(kv_heads=H)
    assert same.state_dict().keys() == mha.state_dict().keys()
    same.load_state_dict(mha.state_dict())
    x = _x(seed=2)
    assert torch.equal(same(x), mha(x))


def _lm(**flags) -> TransformerWrapper:
    torch.manual_seed(0)
    layers = Decoder(dim=D, depth=3, heads=H, attn_dim_head=DH, **flags)
    return TransformerWrapper(num_tokens=20, max_seq_len=64, attn_layers=layers).eval()


@pytest.mark.parametrize(
    ("flags", "kv_heads"),
    [
        ({}, H),
        ({"attn_kv_heads": 2}, 2),
        ({"attn_kv_heads": 3}, 3),
        ({"attn_one_kv_head": True}, 1),
    ],
)
def test_cache_holds_only_the_kv_heads(flags, kv_heads: int) -> None:
    """Bytes per token = depth * 2 * hk * dh * 4 (float32): the MLA paper's 2 n_g d_h l."""
    model = _lm(**flags)
    ids = torch.randint(0, 20, (1, 16))
    sizes = []
    for n in (8, 16):
        _, cache = model(ids[:, :n], return_cache=True)
        assert all(e.k.shape == e.v.shape == (1, kv_heads, n, DH) for e in cache.entries)
        sizes.append(tensor_bytes(cache))
    assert (sizes[1] - sizes[0]) / 8 == 3 * 2 * kv_heads * DH * 4


# --- the GQA paper's conversion: mean-pool each group's key/value heads ---


def test_mean_pool_heads_is_the_mean_of_each_group() -> None:
    w = torch.randn(H * DH, D, dtype=torch.float64)  # a (h dh, d) projection weight
    pooled = mean_pool_heads(w, H, 2)
    blocks = w.unflatten(0, (H, DH))
    expected = torch.cat(
        [(blocks[0] + blocks[1] + blocks[2]) / 3, (blocks[3] + blocks[4] + blocks[5]) / 3]
    )
    torch.testing.assert_close(pooled, expected, atol=1e-15, rtol=0)
    mem = torch.randn(4, 3, DH, dtype=torch.float64)  # (hk, m, dh) memory keys
    torch.testing.assert_close(
        mean_pool_heads(mem, 4, 2), torch.stack([mem[:2].mean(0), mem[2:].mean(0)])
    )


def test_group_kv_heads_pools_the_weights_and_keeps_the_rest() -> None:
    model = _lm(attn_num_mem_kv=2).double()
    grouped = group_kv_heads(model, 2)
    assert grouped.attn_layers.config.attn.kv_heads == 2
    old, new = model.state_dict(), grouped.state_dict()
    assert new.keys() == old.keys() and next(iter(new.values())).dtype == torch.float64
    for key, value in new.items():
        if key.endswith(("to_k.weight", "to_v.weight")):
            blocks = old[key].unflatten(0, (H, DH))
            expected = torch.cat([blocks[:3].mean(0), blocks[3:].mean(0)])
        elif key.endswith(("mem_k", "mem_v")):
            expected = torch.stack([old[key][:3].mean(0), old[key][3:].mean(0)])
        else:
            expected = old[key]
        torch.testing.assert_close(value, expected, atol=1e-15, rtol=0, msg=key)


def test_group_kv_heads_keeps_outputs_when_groups_already_share_weights() -> None:
    """GQA paper invariant: heads of a group with identical k/v weights pool to themselves."""
    model = _lm().double()
    with torch.no_grad():
        for layer in model.attn_layers.layers:
            proj = getattr(layer["block"], "proj", None)
            for linear in (proj.to_k, proj.to_v) if proj is not None else ():
                heads = linear.weight.unflatten(0, (H, DH))
                linear.weight.copy_(heads[::3].repeat_interleave(3, dim=0).flatten(0, 1))
    ids = torch.randint(0, 20, (2, 9))
    grouped = group_kv_heads(model, 2)
    torch.testing.assert_close(grouped(ids), model(ids), atol=1e-12, rtol=0)
    assert grouped.training is model.training


def test_group_kv_heads_converts_both_sides_of_an_xtransformer() -> None:
    model = XTransformer(
        dim=D,
        enc_num_tokens=10,
        enc_depth=1,
        enc_max_seq_len=8,
        enc_heads=H,
        enc_attn_dim_head=DH,
        dec_num_tokens=10,
        dec_depth=1,
        dec_max_seq_len=8,
        dec_heads=H,
        dec_attn_dim_head=DH,
        dec_cross_attn_kv_heads=H,  # an explicit cross-attention override is replaced too
    )
    grouped = group_kv_heads(model, 3)
    heads = [m.k_heads for m in grouped.modules() if hasattr(m, "k_heads")]
    assert heads == [3] * 3  # encoder self, decoder self, decoder cross


def test_group_kv_heads_refusals() -> None:
    with pytest.raises(ValueError, match="kv_heads=4 must divide the 6 key/value heads"):
        group_kv_heads(_lm(), 4)
    with pytest.raises(ValueError, match="CollaborativeProjection, which has no key/value heads"):
        group_kv_heads(_lm(attn_collab_heads=True), 2)
    with pytest.raises(TypeError, match="'kv_heads' must be an int"):
        group_kv_heads(_lm(), 2.0)


# --- refusals at construction, naming both flags ---


@pytest.mark.parametrize(
    ("flags", "pattern"),
    [
        ({"attn_kv_heads": 4}, r"attn_kv_heads=4 does not divide heads=6.*\[1, 2, 3, 6\]"),
        (
            {"cross_attn_kv_heads": 4, "cross_attend": True},
            "cross_attn_kv_heads=4 does not divide heads=6",
        ),
        ({"attn_kv_heads": 2, "attn_one_kv_head": True}, "'attn_one_kv_head' and 'attn_kv_heads'"),
        (
            {"attn_kv_heads": 2, "attn_collab_heads": True},
            "'attn_kv_heads' and 'attn_collab_heads'",
        ),
        (
            {"attn_one_kv_head": True, "attn_collab_heads": True},
            "'attn_one_kv_head' and 'attn_collab_heads'",
        ),
        ({"attn_kv_heads": 0}, "'attn_kv_heads' must be >= 1"),
    ],
)
def test_refused_head_layouts_name_both_flags(flags, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        Decoder(dim=D, depth=1, heads=H, **flags)


@pytest.mark.parametrize(("value", "wanted"), [("2", "int or None"), (True, "int or None")])
def test_kv_heads_type_is_checked(value, wanted: str) -> None:
    with pytest.raises(TypeError, match=f"'attn_kv_heads' must be {wanted}"):
        Encoder(dim=D, depth=1, heads=H, attn_kv_heads=value)


def test_catalog_switches_mqa_and_gqa_on() -> None:
    for name in ("mqa", "gqa"):
        entry = mechanism(name)
        assert entry.available, entry.unavailable_reason
        model = Decoder(dim=D, depth=1, heads=4, **entry.flags)
        assert model.layers[0]["block"].proj.k_heads == {"mqa": 1, "gqa": 2}[name]
