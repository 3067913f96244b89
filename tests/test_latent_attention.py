"""Multi-head latent attention (DeepSeek-V2, arXiv 2405.04434): the layer against the paper's
equations written out here in float64, absorbed == materialised, the cache (only the latent and
the rotary keys), the choice of mode, and the refusals.

Shape legend: b batch, n tokens, h heads, s rotary key heads, d model dim, dh head dim,
c latent width d_c, r rotary dim d_R.
"""

from __future__ import annotations

import math

import pytest
import torch
from flag_models import VOCAB, build, prefill_then_steps, tokens
from torch import Tensor

from x_attn import Attention, Decoder, Encoder, TransformerWrapper
from x_attn.cache import LatentEntry
from x_attn.catalog import mechanism
from x_attn.positional.context import PositionContext, RowPositions
from x_attn.registry import flag_case
from x_attn.train.measure import tensor_bytes

B, N, D, H, DH, C, R = 2, 7, 16, 4, 6, 10, 4
BASE = 10000.0


def rope(t: Tensor, positions: Tensor) -> Tensor:
    """RoFormer's rotation of (..., n, r) with pairs (i, i + r/2), theta_i = base^(-2i/r)."""
    half = t.shape[-1] // 2
    theta = BASE ** (-2.0 * torch.arange(half, dtype=torch.float64) / t.shape[-1])
    angle = positions.to(torch.float64)[:, None] * theta
    a, b = t[..., :half], t[..., half:]
    return torch.cat((a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()), -1)


def mla_reference(
    layer: Attention, x: Tensor, mask: Tensor, s: int, r: int = R, rotate: bool = True
) -> Tensor:
    """Section 2.1 of the paper, head by head: c = W_dkv x; k_C = W_uk c; v = W_uv c;
    q_C = W_uq c_q; q_R = RoPE(W_qr c_q); k_R = RoPE(W_kr x) (rotary key t // (h / s));
    o_t = softmax((q_C k_C + q_R k_R) / sqrt(dh + r)) v; u = W_o [o_1; ...; o_h]. Without
    ``rotate``, RoPE is the identity (no positions)."""
    positioned = rope if rotate else (lambda t, positions: t)
    w = {k.removeprefix("proj."): v for k, v in layer.state_dict().items()}
    pos = torch.arange(x.shape[1])
    c = x @ w["to_latent_kv.weight"].T
    c_q = x @ w["to_latent_q.weight"].T if "to_latent_q.weight" in w else x
    allowed = (pos[None, :] <= pos[:, None]) & mask[:, None, :]  # (b, i, j)
    heads = []
    for t in range(H):
        rows, rope_rows = slice(t * DH, (t + 1) * DH), slice(t * r, (t + 1) * r)
        g = t // (H // s)
        q_c, k_c, v = (
            c_q @ w["to_q.weight"][rows].T,
            c @ w["to_k.weight"][rows].T,
            c @ w["to_v.weight"][rows].T,
        )
        q_r = positioned(c_q @ w["to_q_rope.weight"][rope_rows].T, pos)
        k_r = positioned(x @ w["to_k_rope.weight"][g * r : (g + 1) * r].T, pos)
        scores = (q_c @ k_c.transpose(1, 2) + q_r @ k_r.transpose(1, 2)) / math.sqrt(DH + r)
        heads.append(scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v)
    return torch.cat(heads, dim=-1) @ w["to_out.weight"].T


def _layer(s: int = 1, **flags) -> Attention:
    torch.manual_seed(0)
    layer = Attention(
        D,
        heads=H,
        dim_head=DH,
        causal=True,
        rotary_dim=R,
        use_latent_kv=True,
        dim_latent_kv=C,
        latent_rope_subheads=s,
        **flags,
    )
    return layer.double().eval()


def _positions(n: int, start: int = 0, q_len: int | None = None) -> PositionContext:
    """Rotary angles written from the formula (not read from the library's RotaryEmbedding)."""
    theta = BASE ** (-2.0 * torch.arange(R // 2, dtype=torch.float64) / R)
    angles = torch.arange(start, start + n, dtype=torch.float64)[:, None] * theta
    return PositionContext(q_len or n, n, rotary=angles, start=start)


def _x(n: int = N, seed: int = 0) -> Tensor:
    return torch.randn(B, n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


MASK = torch.tensor([[True] * N, [False, False] + [True] * (N - 2)])


@pytest.mark.parametrize("absorb", [None, True, False])
@pytest.mark.parametrize("s", [1, 2])
@pytest.mark.parametrize("latent_q", [None, 5])
@pytest.mark.parametrize("flash", [None, False])
def test_layer_equals_the_papers_equations(absorb, s: int, latent_q, flash) -> None:
    flags = dict(latent_absorb=absorb, flash=flash)
    if latent_q:
        flags.update(use_latent_q=True, dim_latent_q=latent_q)
    layer, x = _layer(s, **flags), _x()
    out = layer(x, mask=MASK, positions=_positions(N))
    expected = mla_reference(layer, x, MASK, s)
    torch.testing.assert_close(out[1, 2:], expected[1, 2:], atol=1e-12, rtol=0)
    torch.testing.assert_close(out[0], expected[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("absorb", [True, False])
@pytest.mark.parametrize("s", [1, 2])
def test_decoupled_keys_without_rotary_are_unrotated(absorb: bool, s: int) -> None:
    """rotary_pos_emb=False: the decoupled dims stay, of the default rotary width
    min(max(dh / 2, 32), dh) = 6 here, with RoPE the identity; cached decode == full."""
    torch.manual_seed(0)
    layer = Attention(
        D,
        heads=H,
        dim_head=DH,
        causal=True,
        use_latent_kv=True,
        dim_latent_kv=C,
        latent_rope_subheads=s,
        latent_absorb=absorb,
    ).double()
    assert layer.proj.rope_dim == 6 and layer.proj.rotary_dim is None
    x = _x(seed=4)
    expected = mla_reference(layer, x, MASK, s, r=6, rotate=False)
    torch.testing.assert_close(layer(x, mask=MASK)[0], expected[0], atol=1e-12, rtol=0)
    entry, steps = layer.new_cache_entry(), []
    for start, stop in ((0, 4), (4, 5), (5, 7)):
        steps.append(layer(x[:, start:stop], mask=MASK[:, start:stop], cache=entry))
    assert entry.latent.shape == (B, 1, N, C + s * 6)
    torch.testing.assert_close(torch.cat(steps, 1)[0], expected[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("s", [1, 2])
def test_absorbed_decoding_equals_materialised(s: int) -> None:
    """Prefill 4, then 3 single tokens, against the cache: absorbed == materialised (1e-9)."""
    x = _x(seed=3)
    outs = {}
    for absorb in (True, False):
        layer, entry, steps = _layer(s, latent_absorb=absorb), None, []
        entry = layer.new_cache_entry()
        for start, stop in ((0, 4), (4, 5), (5, 6), (6, 7)):
            ctx = _positions(stop, 0, q_len=stop - start)
            out = layer(x[:, start:stop], mask=MASK[:, start:stop], positions=ctx, cache=entry)
            steps.append(out)
        outs[absorb] = torch.cat(steps, dim=1)
        assert isinstance(entry, LatentEntry) and entry.latent.shape == (B, 1, N, C + s * R)
    torch.testing.assert_close(outs[True], outs[False], atol=1e-9, rtol=0)
    torch.testing.assert_close(
        outs[False][0], mla_reference(_layer(s), x, MASK, s)[0], atol=1e-12, rtol=0
    )


def test_automatic_mode_absorbs_single_token_decoding_only() -> None:
    proj, x, ctx = _layer().proj, _x(64), _positions(64)
    rows = ctx.rows(ctx.queries)
    payload = proj.keys(x, rows)
    q_last = proj.queries(x[:, -1:], RowPositions(rotary=ctx.rotary.rows(63, 64)))
    decode = proj.operands(q_last, payload)
    assert decode.k.shape == (B, 1, 64, C + R) and decode.v.shape == (B, 1, 64, C)
    prefill = proj.operands(proj.queries(x, rows), payload)
    assert prefill.k.shape == (B, H, 64, DH + R) and prefill.v.shape == (B, H, 64, DH)
    # DeepSeek-V2's dimensions (h 128, dh 128, c 512, r 64): the same choice
    assert proj.absorbed_is_cheaper(1, 4096) and not proj.absorbed_is_cheaper(4096, 4096)


def test_the_rotary_key_is_one_per_token_shared_by_every_head() -> None:
    layer = _layer(s=1)
    payload = layer.proj.keys(_x(), _positions(N).rows(_positions(N).queries))
    k, _ = layer.proj.expand(payload)
    assert torch.equal(k[..., DH:], k[:, :1, :, DH:].expand(-1, H, -1, -1))
    assert not torch.equal(k[:, 0, :, :DH], k[:, 1, :, :DH])


def _lm(depth: int = 3, **flags) -> TransformerWrapper:
    torch.manual_seed(0)
    layers = Decoder(
        dim=D, depth=depth, heads=H, attn_dim_head=DH, attn_use_latent_kv=True, **flags
    )
    return TransformerWrapper(num_tokens=20, max_seq_len=64, attn_layers=layers).eval()


@pytest.mark.parametrize(
    ("flags", "width"),
    [
        ({"attn_dim_latent_kv": C}, C),  # no positions in the keys: the latent alone
        ({"attn_dim_latent_kv": C, "rotary_pos_emb": True, "rotary_emb_dim": R}, C + R),
        (
            {
                "attn_dim_latent_kv": 12,
                "rotary_pos_emb": True,
                "rotary_emb_dim": 2,
                "attn_latent_rope_subheads": 2,
            },
            12 + 2 * 2,
        ),
    ],
)
def test_cache_bytes_per_token_are_latent_plus_rotary_key(flags, width: int) -> None:
    """(d_c + s d_R) * element size per token and layer: the MLA paper's (d_c + d_h^R) l."""
    model = _lm(**flags)
    ids = torch.randint(0, 20, (1, 16))
    sizes = []
    for n in (8, 16):
        _, cache = model(ids[:, :n], return_cache=True)
        assert all(
            type(e) is LatentEntry and e.latent.shape == (1, 1, n, width) for e in cache.entries
        )
        sizes.append(tensor_bytes(cache))
    assert (sizes[1] - sizes[0]) / 8 == 3 * width * 4


def test_cross_attention_latent_caches_the_context_once() -> None:
    torch.manual_seed(0)
    layers = Decoder(
        dim=D,
        depth=2,
        heads=H,
        attn_dim_head=DH,
        cross_attend=True,
        cross_attn_use_latent_kv=True,
        cross_attn_dim_latent_kv=C,
        rotary_pos_emb=True,
    )
    model = TransformerWrapper(num_tokens=20, max_seq_len=32, attn_layers=layers).double().eval()
    ids, context = torch.randint(0, 20, (B, 6)), torch.randn(B, 5, D, dtype=torch.float64)
    stepped, cache = prefill_then_steps(model, ids, 4, context=context)
    torch.testing.assert_close(stepped, model(ids, context=context), atol=1e-9, rtol=0)
    cross = [e for e in cache.entries if e.kind == "context"]
    assert [tuple(e.payload.shape) for e in cross] == [(B, 1, 5, C)] * 2
    assert cache.select(torch.tensor([1])).batch == 1


@pytest.mark.parametrize(
    "name",
    ["attn_latent_rope_subheads", "attn_latent_rope_subheads=2 without rotary", "attn_kv_heads"],
)
def test_one_latent_or_grouped_cache_serves_two_continuations(name: str) -> None:
    """Caches are values: continuing one cache twice (no autograd, so appends go into a
    shared growth buffer) leaves the first continuation's rows intact; both equal the full
    forward. MLA decodes absorbed here (one token against the cache)."""
    net, x = build(flag_case(name)), tokens(2, 8)
    y = x.clone()
    y[:, 6:] = (x[:, 6:] + 3) % VOCAB
    with torch.no_grad():
        full_x, full_y = net(x), net(y)
        _, cache = net(x[:, :5], return_cache=True)
        _, cache = net(x[:, 5:6], cache=cache, return_cache=True)  # now grows a buffer
        _, cache_a = net(x[:, 6:7], cache=cache, return_cache=True)
        _, cache_b = net(y[:, 6:7], cache=cache, return_cache=True)
        a, _ = net(x[:, 7:8], cache=cache_a, return_cache=True)
        b, _ = net(y[:, 7:8], cache=cache_b, return_cache=True)
    torch.testing.assert_close(a, full_x[:, 7:8], atol=1e-9, rtol=0)
    torch.testing.assert_close(b, full_y[:, 7:8], atol=1e-9, rtol=0)


def test_half_precision_absorbed_and_materialised_agree_without_nan() -> None:
    model = _lm(attn_dim_latent_kv=C, rotary_pos_emb=True).to(torch.bfloat16)
    ids = torch.randint(0, 20, (B, 12))
    with torch.no_grad():
        outs = []
        for absorb in (True, False):
            for layer in model.attn_layers.layers:
                if hasattr(layer["block"], "proj"):
                    layer["block"].proj.absorb = absorb
            outs.append(model(ids).float())
    assert all(torch.isfinite(o).all() for o in outs)
    assert (outs[0] - outs[1]).abs().max() < 0.1 * outs[1].abs().max()


# --- refusals at construction, naming both flags ---


@pytest.mark.parametrize(
    ("flags", "pattern"),
    [
        ({"attn_use_latent_kv": True}, "'attn_use_latent_kv=True' needs 'attn_dim_latent_kv'"),
        (
            {"attn_dim_latent_kv": 8},
            "'attn_dim_latent_kv' is set but 'attn_use_latent_kv' is False",
        ),
        ({"attn_use_latent_q": True}, "'attn_use_latent_q=True' needs 'attn_dim_latent_q'"),
        ({"attn_dim_latent_q": 8}, "'attn_dim_latent_q' is set but 'attn_use_latent_q'"),
        ({"attn_latent_absorb": True}, "'attn_latent_absorb' is an option of multi-head latent"),
        (
            {"attn_latent_rope_subheads": 1, "rotary_pos_emb": True},
            "'attn_latent_rope_subheads' is an option",
        ),
        (
            {"attn_use_latent_kv": True, "attn_dim_latent_kv": 8, "attn_kv_heads": 2},
            "'attn_use_latent_kv' and 'attn_kv_heads'",
        ),
        (
            {"attn_use_latent_kv": True, "attn_dim_latent_kv": 8, "attn_one_kv_head": True},
            "'attn_use_latent_kv' and 'attn_one_kv_head'",
        ),
        (
            {"attn_use_latent_kv": True, "attn_dim_latent_kv": 8, "attn_num_mem_kv": 2},
            "'attn_use_latent_kv' and 'attn_num_mem_kv'",
        ),
        (
            {"attn_use_latent_kv": True, "attn_dim_latent_kv": 8, "attn_collab_heads": True},
            "attn_collab_heads and attn_use_latent_kv both replace",
        ),
        (
            {"attn_use_latent_q": True, "attn_dim_latent_q": 8, "attn_collab_heads": True},
            "'attn_use_latent_q' and 'attn_collab_heads'",
        ),
        (
            {"attn_use_latent_kv": True, "attn_dim_latent_kv": 8, "position_infused_attn": True},
            "attn_use_latent_kv and position_infused_attn",
        ),
        (
            {
                "attn_use_latent_kv": True,
                "attn_dim_latent_kv": 8,
                "rotary_pos_emb": True,
                "attn_latent_rope_subheads": 3,
            },
            "attn_latent_rope_subheads=3 does not divide heads=4",
        ),
        (
            {
                "attn_use_latent_kv": True,
                "attn_dim_latent_kv": 8,
                "cross_attend": True,
                "cross_attn_latent_rope_subheads": 1,
            },
            "cross_attn_latent_rope_subheads: cross-attention has no positions",
        ),
        (
            {"attn_use_latent_kv": True, "attn_dim_latent_kv": 0},
            "'attn_dim_latent_kv' must be >= 1",
        ),
    ],
)
def test_refused_latent_flags_name_both(flags, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        Decoder(dim=D, depth=1, heads=H, **flags)


def test_latent_flag_types_are_checked() -> None:
    with pytest.raises(TypeError, match="'attn_latent_absorb' must be bool or None"):
        Encoder(
            dim=D, depth=1, attn_use_latent_kv=True, attn_dim_latent_kv=8, attn_latent_absorb="yes"
        )


def test_catalog_switches_mla_on() -> None:
    entry = mechanism("mla")
    assert entry.available, entry.unavailable_reason
    model = Decoder(dim=32, depth=1, heads=4, rotary_pos_emb=True, **entry.flags)
    assert isinstance(model.layers[0]["block"].new_cache_entry(), LatentEntry)
