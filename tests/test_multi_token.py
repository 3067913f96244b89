"""Multi-Token Attention (arXiv 2504.00927) against the paper's equations, written here.

The reference computes, with explicit loops in float64, for each head:
    A = Softmax(Mask_-inf(HeadMix(Conv2d_theta(Mask_0(Q K^T / sqrt(d))))))
    A = Mask_0(HeadMix(Mask_0(Conv2d_theta'(Mask_0(A)))))           (post-softmax parts)
    out = GroupNorm(A V) * (1 - lambda(l)), gated by sigmoid(w . out + b)
where Conv2d_theta(X)[i, j] = sum_{i'=0}^{c_q-1} sum_{j'=-(c_k-1)/2}^{(c_k-1)/2}
theta[i', j'] X[i - i', j - j'] (outside the map: 0), Mask_0 also zeroes the rows of padded
queries, and memory key/values form a block of their own. Also: identity kernels give plain
attention, causality (with a negative control), cached decoding in chunks equals the full
forward, layer selection, the depth scale, gradients, half precision and every refusal.

Shape legend: b batch, h heads, n sequence, i queries, j keys, d head dim, g head groups.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.func import functional_call

from x_attn import Attention, CrossAttender, Decoder, KVEntry, TransformerWrapper
from x_attn.attention.features import multi_token
from x_attn.attention.features.multi_token import depth_scale

DIM, HEADS, DH = 16, 4, 4
ALL = dict(
    mta_post_conv=True,
    mta_head_kernel=2,
    mta_pre_head_mix=True,
    mta_post_head_mix=True,
    mta_group_norm=True,
    mta_depth_scale=True,
    mta_gate=True,
)
VARIANTS = {
    "pre": {},
    "post": dict(mta_pre_conv=False, mta_post_conv=True),
    "mix": dict(mta_pre_conv=False, mta_pre_head_mix=True, mta_post_head_mix=True),
    "all": ALL,
    "all_memkv": {**ALL, "num_mem_kv": 2},
}


def _jitter(module: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """Move every parameter away from its initialisation (identity kernels, unit gains)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def _wrapper(max_seq_len: int = 32, **layer_flags) -> TransformerWrapper:
    """A float64 eval TransformerWrapper(Decoder) of the test dims with ``layer_flags``."""
    layers = Decoder(dim=DIM, depth=2, heads=HEADS, attn_dim_head=DH, **layer_flags)
    model = TransformerWrapper(num_tokens=32, max_seq_len=max_seq_len, attn_layers=layers)
    return model.double().eval()


def _attn(options: dict) -> dict:
    """Attention options -> stack flags (``mta`` -> ``attn_mta``)."""
    return {f"attn_{k}": v for k, v in options.items()}


def _layer(causal: bool, layer_index: int = 0, **options) -> Attention:
    """A float64 MTA layer (c_q = 3, c_k = 5) with every parameter randomised."""
    torch.manual_seed(0)
    options = dict(mta=True, mta_kernel_q=3, mta_kernel_k=5, **options)
    layer = Attention(DIM, HEADS, causal=causal, dim_head=DH, layer_index=layer_index, **options)
    return _jitter(layer.double())


# ---------------------------------------------------------------------------------------------
# the reference


def conv_ref(x: Tensor, kernel: Tensor) -> Tensor:
    """The paper's key-query convolution of (b, h, i, j) maps; theta[i', j'] of head h is
    kernel[h, 0, c_q - 1 - i', (c_k - 1)/2 - j'] (the layer stores F.conv2d's layout)."""
    c_q, c_k = kernel.shape[-2:]
    half = (c_k - 1) // 2
    out = torch.zeros_like(x)
    n_i, n_j = x.shape[-2:]
    for i in range(n_i):
        for j in range(n_j):
            for di in range(c_q):
                for dj in range(-half, half + 1):
                    if 0 <= i - di and 0 <= j - dj < n_j:
                        theta = kernel[:, 0, c_q - 1 - di, half - dj]
                        out[:, :, i, j] += theta * x[:, :, i - di, j - dj]
    return out


def mix_ref(x: Tensor, weight: Tensor) -> Tensor:
    """out[:, g c + o] = sum_c weight[g, o, c] x[:, g c + c]."""
    groups, size, _ = weight.shape
    out = torch.zeros_like(x)
    for g in range(groups):
        for o in range(size):
            for c in range(size):
                out[:, g * size + o] += weight[g, o, c] * x[:, g * size + c]
    return out


def reference(
    layer: Attention, x: Tensor, mask: Tensor | None = None, probs: bool = False
) -> Tensor:
    """The layer's output (or, with ``probs``, its attention weights) from the equations above,
    with its own parameters."""
    b, n, _ = x.shape
    heads = lambda t: t.unflatten(-1, (HEADS, DH)).transpose(1, 2)  # noqa: E731
    proj = layer.proj
    q, k, v = (heads(x @ w.weight.T) for w in (proj.to_q, proj.to_k, proj.to_v))
    real = torch.ones(b, n, dtype=torch.bool) if mask is None else mask
    allowed = real[:, None, None, :].expand(b, HEADS, n, n).clone()
    if layer.causal:
        allowed &= torch.ones(n, n, dtype=torch.bool).tril()
    free = layer.memory_kv.num if layer.memory_kv is not None else 0
    if free:
        k = torch.cat((layer.memory_kv.mem_k.expand(b, -1, -1, -1), k), dim=2)
        v = torch.cat((layer.memory_kv.mem_v.expand(b, -1, -1, -1), v), dim=2)
        allowed = torch.cat((torch.ones(b, HEADS, n, free, dtype=torch.bool), allowed), dim=-1)
    zero_in = allowed & real[:, None, :, None]  # Mask_0 and the rows of padded queries

    def conv(maps: Tensor, kernel: Tensor) -> Tensor:
        maps = torch.where(zero_in, maps, 0.0)
        parts = (maps[..., :free], maps[..., free:]) if free else (maps,)
        return torch.cat([conv_ref(part, kernel) for part in parts], dim=-1)

    mta = layer.scores.features[0]
    a = q @ k.transpose(-1, -2) * DH**-0.5
    if mta.pre_conv is not None:
        a = conv(a, mta.pre_conv.kernel)
    if mta.pre_mix is not None:
        a = mix_ref(torch.where(allowed, a, 0.0), mta.pre_mix.weight)
    a = torch.where(allowed, a, -math.inf).softmax(dim=-1).nan_to_num(0.0)  # no key: zeros
    if mta.post_conv is not None:
        a = torch.where(allowed, conv(a, mta.post_conv.kernel), 0.0)
    if mta.post_mix is not None:
        a = torch.where(allowed, mix_ref(a, mta.post_mix.weight), 0.0)
    if probs:
        return a
    out = a @ v
    norm = getattr(layer, "mta_head_norm", None)
    if norm is not None and norm.norm is not None:
        rms = (out.pow(2).mean(dim=-1, keepdim=True) + 1e-5).sqrt()
        out = out / rms * norm.norm.g * depth_scale(0)
    if norm is not None and norm.gate is not None:
        out = out * torch.sigmoid(out @ norm.gate.weight.T + norm.gate.bias)
    return out.transpose(1, 2).flatten(2) @ layer.to_out.weight.T


def _padding(b: int, n: int) -> Tensor:
    """Sample 0 hides a middle and the last position, sample 1 the first two (when n allows)."""
    mask = torch.ones(b, n, dtype=torch.bool)
    if n >= 4:
        mask[0, n // 2] = mask[0, -1] = False
        mask[1, :2] = False
    return mask


@pytest.mark.parametrize("n", [1, 2, 7])
@pytest.mark.parametrize("causal", [True, False], ids=["decoder", "encoder"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_layer_matches_the_paper_equations(variant: str, causal: bool, n: int) -> None:
    layer = _layer(causal, **VARIANTS[variant])
    x = torch.randn(2, n, DIM, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    for mask in (None, _padding(2, n)):
        with torch.no_grad():
            got = layer(x, mask=mask)
        torch.testing.assert_close(got, reference(layer, x, mask), atol=1e-12, rtol=0)


def test_attention_maps_are_the_reference_weights() -> None:
    layer = _layer(True, **ALL)
    x = torch.randn(2, 6, DIM, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    mask = _padding(2, 6)
    with torch.no_grad():
        _, inter = layer(x, mask=mask, return_attn=True)
    torch.testing.assert_close(
        inter.probs, reference(layer, x, mask, probs=True), atol=1e-12, rtol=0
    )


# ---------------------------------------------------------------------------------------------
# identity, causality, masking (with negative controls)


def _models(**mta) -> tuple[TransformerWrapper, TransformerWrapper]:
    """A plain Decoder (manual kernel, as MTA's) and the same weights with MTA (its parts at
    their initialisation)."""
    torch.manual_seed(0)
    plain = _jitter(_wrapper(attn_flash=False))
    model = _wrapper(**_attn(mta))
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all("scores" in m or "mta" in m for m in missing)
    return plain, model


def test_identity_kernels_and_mixes_equal_plain_attention() -> None:
    options = {k: v for k, v in ALL.items() if k not in ("mta_group_norm", "mta_depth_scale")}
    options = {k: v for k, v in options.items() if k != "mta_gate"}
    plain, model = _models(mta=True, mta_kernel_q=4, mta_kernel_k=5, **options)
    x = torch.randint(0, 32, (2, 11), generator=torch.Generator().manual_seed(1))
    mask = _padding(2, 11)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), atol=0, rtol=0)
        # padded query rows enter the convolution as 0, so only real rows equal plain attention
        torch.testing.assert_close(model(x, mask=mask)[mask], plain(x, mask=mask)[mask])
        _jitter(model, 0.1)
        assert (model(x) - plain(x)).abs().max() > 1e-3  # the parts do act once trained


def _causal_gap(model: TransformerWrapper) -> float:
    x = torch.randint(0, 32, (2, 10), generator=torch.Generator().manual_seed(2))
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 5) % 32
    with torch.no_grad():
        return (model(x)[:, :6] - model(y)[:, :6]).abs().max().item()


def test_causality_and_its_negative_control(monkeypatch) -> None:
    model = _jitter(_models(mta=True, mta_kernel_q=3, mta_kernel_k=3, mta_post_conv=True)[1])
    assert _causal_gap(model) == 0.0

    def symmetric(self, canvas: Tensor, rows: int) -> Tensor:  # query axis padded both ways
        c_q, c_k = self.kernel.shape[-2:]
        padded = torch.nn.functional.pad(canvas, (c_k // 2,) * 2 + (c_q // 2, c_q - 1 - c_q // 2))
        return torch.nn.functional.conv2d(padded, self.kernel, groups=canvas.shape[1])

    monkeypatch.setattr(multi_token.KeyQueryConv, "forward", symmetric)
    assert _causal_gap(model) > 1e-6


def _padding_gap(model: TransformerWrapper) -> float:
    """Change the inputs at padded positions of the stack (the wrapper zeroes padded
    embeddings, so a stack called on its own is where padded content could reach real rows)."""
    g = torch.Generator().manual_seed(3)
    h = torch.randn(2, 10, DIM, generator=g, dtype=torch.float64)
    mask = _padding(2, 10)
    other = torch.where(mask[..., None], h, torch.randn(h.shape, generator=g, dtype=h.dtype))
    with torch.no_grad():
        a, b = model.attn_layers(h, mask=mask), model.attn_layers(other, mask=mask)
    return (a[mask] - b[mask]).abs().max().item()


def test_padded_queries_do_not_leak_and_the_negative_control(monkeypatch) -> None:
    model = _jitter(_models(mta=True, mta_kernel_q=3, mta_kernel_k=3, mta_post_conv=True)[1])
    assert _padding_gap(model) == 0.0
    monkeypatch.setattr(multi_token, "_query_padding", lambda spec: None)
    assert _padding_gap(model) > 1e-6  # a padded token's query row would reach its neighbours


# ---------------------------------------------------------------------------------------------
# decoding


def _decoder(**extra) -> TransformerWrapper:
    """Every MTA part (c_q = 4, c_k = 3), randomised."""
    torch.manual_seed(0)
    flags = _attn(dict(mta=True, mta_kernel_q=4, mta_kernel_k=3, **ALL))
    return _jitter(_wrapper(**flags, **extra))


@pytest.mark.parametrize("extra", [{}, {"attn_num_mem_kv": 2}], ids=["plain", "memkv"])
def test_decoding_in_chunks_equals_the_full_forward(extra: dict) -> None:
    model = _decoder(**extra)
    x = torch.randint(0, 32, (2, 13), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 13, dtype=torch.bool)
    mask[1, :3] = False  # left padding
    with torch.no_grad():
        full = model(x, mask=mask)
        cache, outs, start = None, [], 0
        for size in (3, 2, 1, 1, 4, 1, 1):  # calls shorter and longer than c_q - 1 = 3 rows
            out, cache = model(
                x[:, start : start + size],
                mask=mask[:, start : start + size],
                cache=cache,
                return_cache=True,
            )
            outs.append(out)
            start += size
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-9, rtol=0)
    tails = cache.entries[0].tails
    assert set(tails) == {"pre", "post"}
    assert tails["pre"].keys.shape == (2, HEADS, 3, 13)  # c_q - 1 rows over every key
    assert tails["pre"].free.shape[-1] == extra.get("attn_num_mem_kv", 0)


def test_sliding_cache_equals_a_band_mask_forward() -> None:
    """Past the window the cache drops keys; the key kernel (7 wide) still reads the kept rows'
    columns left of the oldest key held, as the band-masked full forward does."""
    window, n = 6, 15
    torch.manual_seed(0)
    flags = _attn(dict(mta=True, mta_kernel_q=3, mta_kernel_k=7, mta_post_conv=True))
    model = _jitter(_wrapper(window, rotary_pos_emb=True, **flags))
    x = torch.randint(0, 32, (2, n), generator=torch.Generator().manual_seed(7))
    pos = torch.arange(n)
    band = (pos[:, None] - pos) < window  # query i sees key j iff i - j < window
    with torch.no_grad():
        reference = model(x, attn_mask=band)
        _, cache = model(x[:, :4], return_cache=True)
        for t in range(4, n):
            cache.slide(window - 1)
            out, cache = model(x[:, t : t + 1], cache=cache, return_cache=True)
            torch.testing.assert_close(out, reference[:, t : t + 1], atol=1e-9, rtol=0)
    assert (reference[:, -1] - model(x)[:, -1]).abs().max() > 1e-6  # the band did cut keys


def test_a_selected_cache_decodes_the_selected_rows() -> None:
    model = _decoder()
    x = torch.randint(0, 32, (3, 9), generator=torch.Generator().manual_seed(5))
    index = torch.tensor([2, 0])
    with torch.no_grad():
        full = model(x[index])
        _, cache = model(x[:, :6], return_cache=True)
        cache = cache.select(index)
        out, _ = model(x[index, 6:], cache=cache, return_cache=True)
    torch.testing.assert_close(out, full[:, 6:], atol=1e-9, rtol=0)


# ---------------------------------------------------------------------------------------------
# layers, depth scale, gradients, precision


def test_chosen_layers_and_the_depth_scale() -> None:
    layers = Decoder(
        dim=DIM,
        depth=3,
        heads=HEADS,
        attn_dim_head=DH,
        attn_mta=True,
        attn_mta_layers=(1, 2),
        attn_mta_group_norm=True,
        attn_mta_depth_scale=True,
    )
    kinds = [line.split(": ")[1] for line in layers.explain()]
    assert kinds == ["sdpa", "manual", "manual"]
    blocks = [layer["block"] for layer in layers.layers if layer["block"].__class__ is Attention]
    assert not any("mta" in name or "scores" in name for name, _ in blocks[0].named_parameters())
    # 1 - (0.8 - 0.6 exp(-0.3 l)): l = 1: 0.2 + 0.6 * 0.74081822068; l = 2: 0.2 + 0.6 * 0.548811636
    assert blocks[1].mta_head_norm.scale == pytest.approx(0.644490932409, abs=1e-12)
    assert blocks[2].mta_head_norm.scale == pytest.approx(0.529286981656, abs=1e-12)
    assert depth_scale(0) == pytest.approx(0.8, abs=1e-15)


def test_gradcheck_through_input_kernels_and_mixes() -> None:
    torch.manual_seed(0)
    layer = Attention(
        8,
        2,
        causal=True,
        dim_head=4,
        mta=True,
        mta_kernel_q=2,
        mta_kernel_k=3,
        mta_post_conv=True,
        mta_pre_head_mix=True,
        mta_post_head_mix=True,
        mta_group_norm=True,
    ).double()
    params = dict(layer.named_parameters())
    names = [n for n in params if "scores" in n]
    assert len(names) == 4

    def run(x: Tensor, *weights: Tensor) -> Tensor:
        return functional_call(layer, {**params, **dict(zip(names, weights))}, (x,))

    x = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    weights = [
        (params[n] + 0.2 * torch.randn_like(params[n])).detach().requires_grad_() for n in names
    ]
    assert torch.autograd.gradcheck(run, (x, *weights))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_finite_and_close(dtype: torch.dtype) -> None:
    model = _decoder()
    x = torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(6))
    mask = _padding(2, 9)
    with torch.no_grad():
        expected = model(x, mask=mask)
        got = model.to(dtype)(x, mask=mask)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double()[mask], expected[mask], atol=0.15, rtol=0.05)


# ---------------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            dict(attn_mta_kernel_q=3),
            ValueError,
            "'attn_mta_kernel_q' is set but 'attn_mta' is False",
        ),
        (dict(attn_mta=True, attn_mta_kernel_k=4), ValueError, "'attn_mta_kernel_k' must be odd"),
        (dict(attn_mta=True, attn_mta_kernel_q=0), ValueError, "'attn_mta_kernel_q' must be >= 1"),
        (dict(attn_mta=True, attn_mta_kernel_q=2.0), TypeError, "'attn_mta_kernel_q' must be int"),
        (dict(attn_mta=1), TypeError, "'attn_mta' must be bool"),
        (dict(attn_mta=True, attn_mta_pre_conv=False), ValueError, "nothing else to convolve"),
        (dict(attn_mta=True, attn_mta_head_kernel=2), ValueError, "head mixing, which is off"),
        (
            dict(attn_mta=True, attn_mta_pre_head_mix=True, attn_mta_head_kernel=3),
            ValueError,
            "attn_mta_head_kernel=3 must divide heads=4",
        ),
        (dict(attn_mta=True, attn_mta_depth_scale=True), ValueError, "group norm, which is off"),
        (dict(attn_mta=True, attn_mta_layers=(0, 2)), ValueError, "past the stack's 2 self-att"),
        (dict(attn_mta=True, attn_mta_layers=()), ValueError, "non-empty tuple"),
        (dict(attn_mta=True, attn_mta_layers=(1, 1)), ValueError, "distinct"),
        (dict(attn_mta=True, attn_mta_layers=[-1]), ValueError, "ints >= 0"),
        (dict(attn_mta=True, attn_mta_layers=1), TypeError, "'attn_mta_layers' must be tuple"),
        (dict(attn_mta=True, attn_flash=True), ValueError, "attn_flash=True.*attn_mta need"),
        (dict(attn_mta=True, cross_attend=True, cross_attn_mta=True), ValueError, "cross_attn_mta"),
        (dict(attn_mta=True, only_cross=True), ValueError, "attn_mta=True acts on self-attention"),
        (dict(attn_mta=True, attn_mta_gates=True), TypeError, "did you mean 'attn_mta_gate'"),
    ],
)
def test_bad_flags_are_refused(kwargs: dict, error: type, match: str) -> None:
    stack = CrossAttender if kwargs.get("only_cross") else Decoder
    with pytest.raises(error, match=match):
        stack(dim=DIM, depth=2, heads=HEADS, **kwargs)


def test_calls_it_cannot_serve_are_refused() -> None:
    layers = Decoder(dim=DIM, depth=1, heads=HEADS, attn_dim_head=DH, attn_mta=True)
    with pytest.raises(ValueError, match="max_mem_len.*attn_mta"):
        TransformerWrapper(num_tokens=32, max_seq_len=8, attn_layers=layers, max_mem_len=4)
    x = torch.randn(1, 3, DIM)
    with pytest.raises(ValueError, match="attn_mta: Transformer-XL memories"):
        layers(x, mems=[torch.randn(1, 2, DIM)])
    layer = Attention(DIM, HEADS, dim_head=DH, mta=True)
    with pytest.raises(ValueError, match="attn_mta: .*called with a context"):
        layer(x, torch.randn(1, 5, DIM))
    with pytest.raises(ValueError, match="attn_mta: this layer's cache entry \\(KVEntry\\)"):
        layer(x, cache=KVEntry())
