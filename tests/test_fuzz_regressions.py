"""Minimal reproductions of every failure class the fuzzer (tests/test_fuzz.py) found.

Each test states the property that must hold in a form any correct fix satisfies: the
combination is refused with a ValueError/TypeError naming the arguments, or it computes what
the reference computes (the full forward, the prompt run alone, the float64 model). Open bugs
are marked ``xfail(strict=True)``: when a fix lands the test passes, strict turns that red, and
the marker (and the matching KNOWN_OPEN entry of tests/test_fuzz.py) are removed.

Shape legend: b batch, n sequence, h heads, i queries, j keys, d model dim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from fuzz_decoding import REFUSED, refusable
from torch import Tensor, nn

from x_attn import (
    AutoregressiveWrapper,
    ContinuousTransformerWrapper,
    CrossAttender,
    Decoder,
    Encoder,
    TransformerWrapper,
)
from x_attn.layers.norms import RMSNorm

VOCAB, DIM, ATOL = 20, 16, 1e-9


def xfail(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


def tiny(stack: type = Decoder, seed: int = 0, jitter: float = 0.3, **flags: Any) -> nn.Module:
    """Float64 eval TransformerWrapper; wrapper flags (num_memory_tokens, max_mem_len) and
    layer flags both go in ``flags``; parameters jittered so nothing sits at its init."""
    torch.manual_seed(seed)
    wrapper_keys = {"num_memory_tokens", "max_mem_len", "use_abs_pos_emb"}
    wrapper = {k: flags.pop(k) for k in list(flags) if k in wrapper_keys}
    layers = stack(dim=DIM, depth=flags.pop("depth", 2), heads=2, attn_dim_head=8, **flags)
    net = TransformerWrapper(num_tokens=VOCAB, max_seq_len=32, attn_layers=layers, **wrapper)
    return _jittered(net.double().eval(), jitter)


def _jittered(net: nn.Module, scale: float) -> nn.Module:
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn_like(p))
    return net


def toks(b: int, n: int, seed: int = 1) -> Tensor:
    return torch.randint(0, VOCAB, (b, n), generator=torch.Generator().manual_seed(seed))


def refused(build: Callable[[], Any], *names: str) -> Any:
    """``build()``, or None when it raises a ValueError/TypeError naming one of ``names``."""
    result = refusable(build, *names)
    return None if result is REFUSED else result


def close(a: Tensor, b: Tensor, atol: float = ATOL) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


# ------------------------------------------------------------------------------------------
# silent wrong results (issue 7 items 1-12)


@pytest.mark.parametrize("flag", ["attn_talking_heads", "attn_post_talking_heads"])
def test_post_talking_heads_with_an_emptied_head_row(flag: str) -> None:
    net = tiny(**{flag: True})
    n, x = 6, toks(1, 6)
    attn_mask = torch.ones(1, 2, n, n, dtype=torch.bool)
    attn_mask[0, 1, 2] = False  # head 1 of query 2 sees nothing
    attn_mask[..., 4] = False  # key 4 hidden from every head and query
    future = x.clone()
    future[:, 3:] = (future[:, 3:] + 1) % VOCAB
    hidden = x.clone()
    hidden[:, 4] = (hidden[:, 4] + 1) % VOCAB
    with torch.no_grad():
        out = net(x, attn_mask=attn_mask)
        close(net(future, attn_mask=attn_mask)[:, :3], out[:, :3])  # causal
        keep = torch.arange(n) != 4
        close(net(hidden, attn_mask=attn_mask)[:, keep], out[:, keep])  # masked key: no effect


def test_mems_with_padding_equal_one_pass() -> None:
    net = tiny(rotary_pos_emb=True, max_mem_len=32)
    x, mask = toks(2, 8), torch.ones(2, 8, dtype=torch.bool)
    mask[0, :2] = False  # left padding in the first segment
    mask[1, 5] = False
    with torch.no_grad():
        full = net(x, mask=mask)
        out1, mems = net(x[:, :4], mask=mask[:, :4], return_mems=True)
        second = net(x[:, 4:], mask=mask[:, 4:], mems=mems)  # mems carry their padding
    close(torch.cat((out1, second), 1)[mask], full[mask])


def test_mems_with_kv_cache_equal_one_pass() -> None:
    """The prefill takes the mems in, the cache holds them; passing them again is refused."""
    net = tiny(rotary_pos_emb=True, max_mem_len=32)
    x = toks(2, 7)
    with torch.no_grad():
        full = net(x)
        _, mems = net(x[:, :3], return_mems=True)
        out, cache = net(x[:, 3:5], mems=mems, return_cache=True)
        outs = [out]
        for t in (5, 6):
            with pytest.raises(ValueError, match="mems"):
                net(x[:, t : t + 1], mems=mems, cache=cache, return_cache=True)
            out, cache = net(x[:, t : t + 1], cache=cache, return_cache=True)
            outs.append(out)
    close(torch.cat(outs, 1), full[:, 3:])


def _padded_generation_matches_alone(net: nn.Module, lengths: tuple[int, ...]) -> None:
    """Each row's tokens and prefill logits equal the prompt run alone."""
    prompts = [toks(1, n, seed=n)[0] for n in lengths]
    ar = AutoregressiveWrapper(net)
    batch = ar.generate(prompts, 4, temperature=0.0)
    width = max(lengths)
    start = torch.tensor([width - n for n in lengths])
    padded = torch.stack([torch.cat((p.new_zeros(width - len(p)), p)) for p in prompts])
    mask = torch.arange(width) >= start.unsqueeze(-1)
    with torch.no_grad():
        logits = net(padded, mask=mask, seq_start_pos=start)
        for row, prompt in enumerate(prompts):
            close(logits[row, -len(prompt) :], net(prompt[None])[0])
            assert torch.equal(batch[row], ar.generate(prompt, 4, temperature=0.0))


@pytest.mark.parametrize("relative", ["rotary_pos_emb", "rel_pos_bias", "alibi_pos_bias"])
def test_padded_generation_with_memory_tokens_and_relative_positions(relative: str) -> None:
    _padded_generation_matches_alone(tiny(num_memory_tokens=2, **{relative: True}), (2, 5))


def test_padded_generation_with_position_infused_attn() -> None:
    _padded_generation_matches_alone(tiny(position_infused_attn=True), (2, 5))


def test_padded_generation_with_memory_key_values_and_rotary() -> None:
    net = tiny(attn_num_mem_kv=1, rotary_pos_emb=True)
    _padded_generation_matches_alone(net, (1, 2))


def test_float16_rmsnorm_on_large_and_zero_vectors() -> None:
    norm = RMSNorm(DIM)
    x = torch.randn(3, DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[0] = 0.0
    x[1] *= 300.0  # x^2 past the float16 maximum
    with torch.no_grad():
        expected = norm.double()(x)
        got = norm.half()(x.half())
    assert torch.isfinite(got).all()
    close(got.double(), expected, atol=1e-2 * (1 + float(expected.abs().max())))


def test_float16_rmsnorm_model_gradients_are_finite() -> None:
    net = tiny(use_rmsnorm=True, jitter=0.0).half().train()  # default init: tiny embeddings
    logits = net(toks(2, 6))
    logits.float().logsumexp(-1).mean().backward()
    for name, p in net.named_parameters():
        assert torch.isfinite(p.grad).all(), name


def test_float16_manual_kernel_equals_sdpa_on_large_activations() -> None:
    torch.manual_seed(0)
    outs = {}
    for flash in (True, False):
        torch.manual_seed(0)
        net = ContinuousTransformerWrapper(
            max_seq_len=8,
            attn_layers=Decoder(dim=DIM, depth=1, heads=2, pre_norm=False, attn_flash=flash),
        )
        x = 300 * torch.randn(2, 5, DIM, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            outs[flash] = net.half().eval()(x.half()).double()
    assert torch.isfinite(outs[True]).all()  # SDPA copes ...
    assert torch.isfinite(outs[False]).all()  # ... the manual kernel must too
    close(outs[False], outs[True], atol=1e-2 * (1 + float(outs[True].abs().max())))


def test_custom_layers_c_without_cross_attend() -> None:
    """Issue 7 item 7 (fixed): a 'c' layer is cross-attention or refused, never a hidden
    non-causal self-attention."""
    net = refused(lambda: tiny(custom_layers=("a", "c", "f")), "custom_layers", "cross_attend")
    if net is None:
        return
    x = toks(1, 6)
    y = x.clone()
    y[:, 3:] = (y[:, 3:] + 1) % VOCAB
    context = torch.randn(1, 5, DIM, dtype=torch.float64)
    with torch.no_grad():
        if refused(lambda: net(x), "context") is not None:  # runs without a context ...
            close(net(x)[:, :3], net(y)[:, :3])  # ... then it must be causal
        close(net(x, context=context)[:, :3], net(y, context=context)[:, :3])


def _blind_to_order(net: nn.Module, context: Tensor) -> bool:
    x = toks(2, 6)
    with torch.no_grad():
        return torch.allclose(
            net(x.roll(1, 1), context=context), net(x, context=context).roll(1, 1)
        )


@pytest.mark.parametrize(
    "flag", ["rotary_pos_emb", "rel_pos_bias", "alibi_pos_bias", "position_infused_attn"]
)
def test_cross_attender_refuses_or_uses_positions(flag: str) -> None:
    net = refused(lambda: tiny(CrossAttender, **{flag: True}), flag, "CrossAttender", "only_cross")
    if net is not None:
        assert not _blind_to_order(net, torch.randn(2, 5, DIM, dtype=torch.float64))


@pytest.mark.parametrize("flag", ["residual_attn", "causal"])
def test_cross_attender_refuses_or_uses_self_attention_flags(flag: str) -> None:
    net = refused(lambda: tiny(CrossAttender, **{flag: True}), flag, "CrossAttender", "only_cross")
    if net is None:
        return
    plain = tiny(CrossAttender)
    plain.load_state_dict(net.state_dict())
    x, context = toks(2, 6), torch.randn(2, 5, DIM, dtype=torch.float64)
    with torch.no_grad():
        assert not torch.allclose(net(x, context=context), plain(x, context=context))


def test_position_flags_on_a_stack_without_attention() -> None:
    build = lambda: tiny(Encoder, custom_layers=("f", "f"), rotary_pos_emb=True)  # noqa: E731
    net = refused(build, "rotary_pos_emb", "custom_layers")
    if net is not None:
        x = toks(2, 6)
        with torch.no_grad():
            assert not torch.allclose(net(x.roll(1, 1)), net(x).roll(1, 1))


def test_seq_start_pos_masks_left_padding() -> None:
    net = tiny()
    x, start = toks(2, 6), torch.tensor([2, 0])
    y = x.clone()
    y[0, :2] = (y[0, :2] + 1) % VOCAB  # change only the pad tokens
    with torch.no_grad():
        close(net(x, seq_start_pos=start)[0, 2:], net(y, seq_start_pos=start)[0, 2:])


def test_kv_cache_reused_for_two_continuations() -> None:
    net, x = tiny(), toks(2, 5)
    y = x.clone()
    y[:, 4] = (y[:, 4] + 1) % VOCAB
    with torch.no_grad():
        _, cache = net(x[:, :4], return_cache=True)
        for seq in (x, y):
            step, _ = net(seq[:, 4:], cache=cache, return_cache=True)  # caches are values
            close(step[:, -1], net(seq)[:, -1])


def test_kv_cache_with_the_whole_sequence() -> None:
    net, x = tiny(), toks(2, 5)
    with torch.no_grad():
        _, cache = net(x[:, :4], return_cache=True)
        with pytest.raises(ValueError, match="input_not_include_cache"):
            net(x, cache=cache, return_cache=True)  # a KVCache takes only the new tokens
        out = net(x, cache=cache, input_not_include_cache=False)
        close(out, net(x)[:, 4:])


def test_autoregressive_wrapper_refuses_an_encoder() -> None:
    with pytest.raises((ValueError, TypeError), match="causal|Encoder|Decoder"):
        AutoregressiveWrapper(tiny(Encoder))


@pytest.mark.parametrize(
    ("stack", "flags"),
    [(Encoder, {}), (Decoder, {}), (Encoder, {"attn_use_entmax15": True})],  # entmax: IndexError
    ids=["encoder", "decoder", "encoder-entmax15"],
)
def test_continuous_nan_in_masked_positions(stack: type, flags: dict) -> None:
    torch.manual_seed(0)
    net = ContinuousTransformerWrapper(
        max_seq_len=8, dim_in=5, attn_layers=stack(dim=DIM, depth=1, heads=2, **flags)
    ).double()
    net = net.eval()
    x = torch.randn(2, 4, 5, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [False, True, True, True]])
    with torch.no_grad():
        out = net(x.masked_fill(~mask.unsqueeze(-1), float("nan")), mask=mask)
        close(out[mask], net(x, mask=mask)[mask])


# ------------------------------------------------------------------------------------------
# the x-transformers cache protocol, crashes, unclear errors


def test_x_transformers_cache_protocol() -> None:
    net, x = tiny(rotary_pos_emb=True), toks(2, 6)
    with torch.no_grad():
        full = net(x)
        logits, cache = net(x[:, :4], return_intermediates=True)
        first = cache
        for t in (5, 6):
            logits, cache = net(x[:, :t], cache=cache, return_intermediates=True)
            close(logits[:, -1], full[:, t - 1])
        y = x.clone()
        y[:, 4] = (y[:, 4] + 1) % VOCAB
        logits, _ = net(y[:, :5], cache=first, return_intermediates=True)  # reused cache
        close(logits[:, -1], net(y[:, :5])[:, -1])


@pytest.mark.parametrize("flag", ["attn_talking_heads", "attn_pre_talking_heads"])
def test_talking_heads_under_bf16_autocast(flag: str) -> None:
    net, x = tiny(**{flag: True}), toks(2, 6)
    with torch.no_grad():
        expected = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = net.float()(x)
    close(got.double(), expected, atol=1e-1 * (1 + float(expected.abs().max())))


def test_feedforward_flags_on_a_stack_without_feedforward() -> None:
    """Fixed: ff_* options on a stack whose custom_layers have no 'f' were ignored."""
    with pytest.raises(ValueError, match=r"ff_glu.*custom_layers \('a', 'a'\)"):
        tiny(custom_layers=("a", "a"), ff_glu=True)


def _position_bias_outputs(flag: str, dtype: torch.dtype, flash: bool, x: Tensor) -> Tensor:
    torch.manual_seed(0)
    layers = Decoder(dim=DIM, depth=1, heads=2, pre_norm=False, attn_flash=flash, **{flag: True})
    net = ContinuousTransformerWrapper(max_seq_len=8, attn_layers=layers).to(dtype).eval()
    with torch.no_grad():
        return net(x.to(dtype)).double()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("flag", ["alibi_pos_bias", "rel_pos_bias"])
def test_low_precision_sdpa_with_a_position_bias_stays_causal(flag: str, dtype) -> None:
    """Fixed: the fused path masked keys at -32752 in float16, which large scores beat."""
    x = 300 * torch.randn(2, 6, DIM, generator=torch.Generator().manual_seed(1))  # post-norm:
    y = x.clone()  # the first attention sees these raw activations
    y[:, 3:] = -y[:, 3:]
    fused = _position_bias_outputs(flag, dtype, True, x)
    close(_position_bias_outputs(flag, dtype, True, y)[:, :3], fused[:, :3], atol=1e-3)
    manual = _position_bias_outputs(flag, dtype, False, x)
    close(fused, manual, atol=1e-2 * (1 + float(manual.abs().max())))


def test_rotary_with_a_one_dim_query_key_head_names_the_flags() -> None:
    """Fixed: it failed inside RotaryEmbedding, naming no flag."""
    flags = dict(attn_collab_heads=True, attn_collab_compression=0.25, rotary_pos_emb=True)
    with pytest.raises(ValueError, match="rotary_pos_emb.*head dim is 1"):
        Decoder(dim=DIM, depth=1, heads=1, attn_dim_head=4, **flags)


def test_decoder_without_self_attention_refusal_names_custom_layers() -> None:
    """Fixed: the refusal named only causal=True, which the user never passed."""
    with pytest.raises(ValueError, match="custom_layers"):
        Decoder(dim=DIM, depth=1, custom_layers=("f", "f"))


def test_laser_in_float16_stays_near_float64() -> None:
    """Fixed: exp(softclamp(v) - 15) was stored in float16, where values below about -1.6
    underflow to 0 (30 nats of range against float16's ~28), so the log was wrong by up to 4."""
    from x_attn import Attention

    torch.manual_seed(0)
    layer = Attention(DIM, heads=1, dim_head=4, laser=True).double()
    with torch.no_grad():
        layer.proj.to_v.weight.mul_(8)  # values of a few units, as a trained model has
    x = torch.randn(2, 5, DIM, dtype=torch.float64)
    with torch.no_grad():
        reference = layer(x)
        half = layer.half()(x.half()).double()
    torch.testing.assert_close(half, reference, atol=0.05, rtol=0)
