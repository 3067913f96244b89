"""Invariants every registered flag must keep (x_attn.registry.FLAGS).

Causality, masked keys having no effect, SDPA path == manual path (values and gradients), the
kernel each layer reports, gradients reaching every parameter, state_dict round trips, the
attention maps of return_attn, and relative-position invariance at the Attention level.

Models are tiny float64 TransformerWrappers in eval mode. Parameters are jittered after
construction so that zero- or identity-initialised parts (ReZero scalars, gates, talking-heads
matrices) are active and the invariants are not trivially true.

Shape legend: b batch, n sequence, h heads, i queries, j keys, d model dim, v vocabulary.
"""

from __future__ import annotations

import pytest
import torch
from flag_models import bind_condition
from torch import Tensor

from x_attn import Attention, Decoder, Encoder, TransformerWrapper
from x_attn.positional.alibi import AlibiPositionalBias
from x_attn.positional.context import PositionContext
from x_attn.positional.rotary import RotaryEmbedding
from x_attn.positional.t5 import T5RelativePositionBias
from x_attn.registry import FLAGS, FlagCase, flag_case

DIMS = dict(dim=32, depth=2, heads=4, attn_dim_head=8)
VOCAB, SEQ, BATCH, HEADS = 32, 10, 2, 4
ATOL = 1e-10
NAMES = [case.name for case in FLAGS]
# Flags whose features need the raw scores (hand-written registry properties, independent of
# the library's own bookkeeping), and the flag each one's refusal must name.
SCORE_FLAGS = {case.name: case.name for case in FLAGS if case.needs_scores}
# post-softmax head mixing: rows sum to the mixing weights, not 1
MIXED_PROBS = {case.name for case in FLAGS if case.probs == "mixed"}
# exact zeros among visible keys
SPARSE_PROBS = {case.name for case in FLAGS if case.probs == "sparse"}
SDPA_NAMES = [case.name for case in FLAGS if case.kernel == "sdpa"]


def build(
    case: FlagCase, stack: type | None = None, seed: int = 0, jitter: bool = True, **layer_extra
) -> TransformerWrapper:
    """Tiny float64 eval model for ``case``; ``layer_extra`` overrides the case's stack flags.

    The default stack is a Decoder, or an Encoder for a flag refused on one (causal_ok=False).
    """
    stack = stack or (Decoder if case.causal_ok else Encoder)
    torch.manual_seed(seed)
    layers = stack(**{**DIMS, **case.layers, **layer_extra})  # a case may set its heads
    model = TransformerWrapper(num_tokens=VOCAB, max_seq_len=16, attn_layers=layers, **case.wrapper)
    model = model.double().eval()
    if jitter:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
    bind_condition(model.attn_layers)
    return model


def tokens(seed: int = 1, n: int = SEQ) -> Tensor:
    return torch.randint(0, VOCAB, (BATCH, n), generator=torch.Generator().manual_seed(seed))


# keys projected along the sequence: the maps are over slots, padding is zeroed before mixing
PROJECTED_KEYS = {"attn_linformer"}
# global tokens named by absolute slot: padding in front of a real token is refused
# flags anchored at absolute slots refuse padding in front of a real token (the error names this)
LEFT_PADDING_REFUSED = {
    "attn_global_tokens": "attn_global_tokens",
    "attn_sparse_summary": "fixed",
    "attn_bigbird": "attn_bigbird",
}


def padding_mask(n: int = SEQ, name: str = "") -> Tensor:
    """(b, n): sample 0 hides a middle and the last positions, sample 1 the first two (for a
    flag that refuses padding in front of real tokens: the last two and three)."""
    mask = torch.ones(BATCH, n, dtype=torch.bool)
    if name in LEFT_PADDING_REFUSED:
        mask[0, -2:] = False
        mask[1, -3:] = False
        return mask
    mask[0, 3] = False
    mask[0, -2:] = False
    mask[1, :2] = False
    return mask


def mem_tokens(model: TransformerWrapper) -> int:
    return model.num_memory_tokens


def mem_kv(case: FlagCase) -> int:
    """Keys without position in front of every call's: memory key/values and null keys."""
    return case.layers.get("attn_num_mem_kv", 0) + case.extra_keys


def assert_exact(a: Tensor, b: Tensor, atol: float = 1e-12) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


# ---------------------------------------------------------------------------------------------
# causality and masking


@pytest.mark.parametrize("name", NAMES)
def test_decoder_is_causal(name: str) -> None:
    case = flag_case(name)
    if not case.causal_ok:
        pytest.skip(f"{name} is not meaningful on a Decoder (registry: causal_ok=False)")
    model = build(case)
    x, t = tokens(), 6
    y = x.clone()
    y[:, t:] = (x[:, t:] + 1 + torch.arange(SEQ - t)) % VOCAB  # change token t and all later
    with torch.no_grad():
        a, b = model(x), model(y)
    assert_exact(a[:, :t], b[:, :t])
    assert (a[:, t] - b[:, t]).abs().max() > 1e-6  # the change does reach position t


@pytest.mark.parametrize("stack", [Encoder, Decoder], ids=["encoder", "decoder"])
@pytest.mark.parametrize("name", NAMES)
def test_masked_keys_have_no_effect(name: str, stack: type) -> None:
    case = flag_case(name)
    if stack is Encoder and not case.encoder_ok:
        with pytest.raises(ValueError, match=name):
            build(case, stack)
        pytest.skip(f"{name} is refused on an Encoder (registry: encoder_ok=False)")
    if stack is Decoder and not case.causal_ok:
        with pytest.raises(ValueError, match=name):
            build(case, stack)
        pytest.skip(f"{name} is refused on a Decoder (registry: causal_ok=False)")
    model = build(case, stack)
    mask = padding_mask()
    x = tokens()
    if name in LEFT_PADDING_REFUSED:
        with pytest.raises(ValueError, match=LEFT_PADDING_REFUSED[name]):  # slots would shift
            model(x, mask=mask)
        return
    y = torch.where(mask, x, (x + 7) % VOCAB)  # change every hidden token
    with torch.no_grad():
        a, b = model(x, mask=mask), model(y, mask=mask)
        unmasked = model(y)
    assert_exact(a[mask], b[mask])
    assert torch.isfinite(a).all()
    assert (unmasked[mask] - a[mask]).abs().max() > 1e-6  # without the mask it would matter


# ---------------------------------------------------------------------------------------------
# kernels: SDPA == manual, what each layer reports


def _logits_and_grads(model: TransformerWrapper, x: Tensor, **kwargs) -> tuple[Tensor, dict]:
    model.zero_grad(set_to_none=True)
    logits = model(x, **kwargs)
    cotangent = torch.randn(
        logits.shape, generator=torch.Generator().manual_seed(5), dtype=logits.dtype
    )
    (logits * cotangent).sum().backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters()}


def _manual_twin(
    case: FlagCase, model: TransformerWrapper, stack: type | None = None, **layer_extra
) -> TransformerWrapper:
    twin = build(case, stack, seed=1, jitter=False, attn_flash=False, **layer_extra)
    twin.load_state_dict(model.state_dict())
    return twin


def _assert_same_run(
    a: TransformerWrapper, b: TransformerWrapper, x: Tensor, loss_only: tuple = (), **kwargs
) -> None:
    """Same logits and gradients (``loss_only``: parameters the logits do not train)."""
    out_a, grads_a = _logits_and_grads(a, x, **kwargs)
    out_b, grads_b = _logits_and_grads(b, x, **kwargs)
    torch.testing.assert_close(out_a, out_b, atol=ATOL, rtol=0)
    assert grads_a.keys() == grads_b.keys()
    for n, g in grads_a.items():
        if g is None and grads_b[n] is None and n in loss_only:
            continue
        assert g is not None and grads_b[n] is not None, n
        torch.testing.assert_close(g, grads_b[n], atol=ATOL, rtol=0, msg=n)


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("name", SDPA_NAMES)
def test_sdpa_path_equals_manual_path(name: str, masked: bool) -> None:
    case = flag_case(name)
    model = build(case)
    twin = _manual_twin(case, model)
    assert all(f": {case.kernel}:" in line for line in model.attn_layers.explain())
    assert all(": manual:" in line for line in twin.attn_layers.explain())
    mask = padding_mask(name=name) if masked else None
    _assert_same_run(model, twin, tokens(), case.loss_only, mask=mask)


CROSS_NAMES = [
    "default",
    "rotary_pos_emb",
    "rel_pos_bias",
    "alibi_pos_bias",
    "position_infused_attn",
    "attn_num_mem_kv",
    "attn_collab_heads",
    "attn_on_attn",
    "num_memory_tokens",
    "attn_qk_norm",
    "attn_qk_rmsnorm",
    "attn_value_rmsnorm",
    "attn_add_zero_kv",
    "attn_head_learned_sink",
    "attn_head_scale",
    "attn_gate_value_heads",
    "attn_output_gate",
    "add_value_residual",
]


@pytest.mark.parametrize("name", CROSS_NAMES)
def test_sdpa_equals_manual_encoder_with_cross_attention(name: str) -> None:
    case = flag_case(name)
    model = build(case, Encoder, cross_attend=True)
    twin = _manual_twin(case, model, Encoder, cross_attend=True)
    assert [line.split(": ")[1] for line in model.attn_layers.explain()] == ["sdpa"] * 4
    assert [line.split(": ")[1] for line in twin.attn_layers.explain()] == ["manual"] * 4
    g = torch.Generator().manual_seed(3)
    context = torch.randn(BATCH, 7, DIMS["dim"], generator=g, dtype=torch.float64)
    context_mask = torch.ones(BATCH, 7, dtype=torch.bool)
    context_mask[0, 5:] = False
    context_mask[1, 0] = False
    _assert_same_run(
        model, twin, tokens(), mask=padding_mask(), context=context, context_mask=context_mask
    )


@pytest.mark.parametrize("name", NAMES)
def test_reported_kernel(name: str) -> None:
    case = flag_case(name)
    model = build(case, jitter=False)
    expected = case.kernel
    lines = model.attn_layers.explain()
    assert len(lines) == model.attn_layers.num_attention_layers == 2
    assert all(line.split(": ")[1] == expected for line in lines), lines
    h = torch.randn(BATCH, SEQ, DIMS["dim"], dtype=torch.float64)
    with torch.no_grad():
        _, inter = model.attn_layers(h, return_hiddens=True)
    assert inter.kernels == [expected] * 2
    if name == "reversible":
        return  # the wrapper's return_intermediates builds a KV cache, which reversible refuses
    with torch.no_grad():
        _, inter = model(tokens(), return_intermediates=True)
    assert inter.kernels == [expected] * 2


@pytest.mark.parametrize("name", sorted(SCORE_FLAGS))
def test_flash_true_with_score_flag_raises(name: str) -> None:
    with pytest.raises(ValueError, match="attn_flash=True") as err:
        build(flag_case(name), attn_flash=True)
    assert SCORE_FLAGS[name] in str(err.value)


# ---------------------------------------------------------------------------------------------
# parameters, gradients, state dict


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(name: str) -> None:
    case = flag_case(name)
    # train mode: the reversible stack's own backward (eval for stochastic depth: no skips)
    model = build(case).train(not case.stochastic)
    _, grads = _logits_and_grads(model, tokens(), mask=padding_mask(name=name))
    for n, g in grads.items():
        if n in case.loss_only:  # trained by the wrapper's loss only (registry)
            assert g is None, f"{n} is listed as loss-only but the logits depend on it"
            continue
        assert g is not None, f"{n} got no gradient"
        assert torch.isfinite(g).all(), n
        assert g.abs().sum() > 0, f"{n} has an all-zero gradient"


@pytest.mark.parametrize("name", NAMES)
def test_train_mode_computes_the_eval_function(name: str) -> None:
    """Every dropout defaults to 0, so train mode (with grad) must give the eval logits."""
    if flag_case(name).stochastic:
        pytest.skip(f"{name} is random in training (tests/test_layer_plan.py checks it)")
    model = build(flag_case(name))
    x, mask = tokens(), padding_mask(name=name)
    with torch.no_grad():
        expected = model(x, mask=mask)
    got = model.train()(x, mask=mask)
    torch.testing.assert_close(got.detach(), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name: str) -> None:
    case = flag_case(name)
    source, target = build(case, seed=0), build(case, seed=1)
    x = tokens()
    with torch.no_grad():
        expected, before = source(x), target(x)
        assert (expected - before).abs().max() > 1e-6  # the fresh model really differs
        target.load_state_dict(source.state_dict())
        assert torch.equal(target(x), expected)


# ---------------------------------------------------------------------------------------------
# attention maps


@pytest.mark.parametrize("name", NAMES)
def test_return_attn_maps_decoder(name: str) -> None:
    case = flag_case(name)
    if not case.causal_ok:
        pytest.skip(f"{name} is not meaningful on a Decoder (registry: causal_ok=False)")
    model = build(case)
    x = tokens()
    if name == "reversible":
        with pytest.raises(ValueError, match="return_attn"):
            model(x, return_attn=True)
        pytest.skip("reversible=True refuses return_attn (its branches keep no per-layer maps)")
    with torch.no_grad():
        plain = model(x)
        logits, maps = model(x, return_attn=True)
    torch.testing.assert_close(logits, plain, atol=ATOL, rtol=0)  # manual run, same function
    i = SEQ + mem_tokens(model)
    j = i + mem_kv(case)
    assert len(maps) == model.attn_layers.num_attention_layers == 2
    if not case.causal_ok:  # built as an Encoder: the maps, compared above, see the future
        return
    future = ~torch.ones(i, j, dtype=torch.bool).tril(j - i)
    for attn in maps:
        assert attn.shape == (BATCH, HEADS, i, j)
        assert (attn[..., future] == 0).all()
        if name not in MIXED_PROBS:
            assert_exact(attn.sum(-1), torch.ones(BATCH, HEADS, i, dtype=attn.dtype))
            assert (attn >= 0).all()
        if name not in SPARSE_PROBS | MIXED_PROBS:  # softmax: every visible key, itself included
            assert (attn[..., ~future] > 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_return_attn_maps_encoder_padding(name: str) -> None:
    case = flag_case(name)
    if not case.encoder_ok:
        pytest.skip(f"{name} is refused on an Encoder (registry: encoder_ok=False)")
    model = build(case, Encoder)
    mask = padding_mask(name=name)
    if name == "reversible":
        pytest.skip("reversible=True refuses return_attn (checked in the Decoder test)")
    if name in PROJECTED_KEYS:
        pytest.skip(f"{name} attends to projected slots, not to the keys (tests/test_linformer.py)")
    with torch.no_grad():
        _, maps = model(tokens(), mask=mask, return_attn=True)
    m = mem_tokens(model)
    key_mask = torch.cat((torch.ones(BATCH, mem_kv(case) + m, dtype=torch.bool), mask), dim=1)
    for attn in maps:
        assert attn.shape == (BATCH, HEADS, SEQ + m, SEQ + m + mem_kv(case))
        hidden = ~key_mask[:, None, None, :].expand_as(attn)
        assert (attn[hidden] == 0).all()
        if name not in MIXED_PROBS:
            assert_exact(attn.sum(-1), torch.ones(attn.shape[:-1], dtype=attn.dtype))


# ---------------------------------------------------------------------------------------------
# relative positions through one Attention layer


def _attend(layer: Attention, x: Tensor, positions: PositionContext) -> Tensor:
    with torch.no_grad():
        return layer(x, positions=positions)


def _layer_and_input(causal: bool) -> tuple[Attention, Tensor]:
    torch.manual_seed(0)
    layer = Attention(32, heads=HEADS, causal=causal, dim_head=8).double().eval()
    x = torch.randn(BATCH, 9, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    return layer, x


@pytest.mark.parametrize("causal", [False, True])
def test_rotary_offset_invariance_through_attention(causal: bool) -> None:
    layer, x = _layer_and_input(causal)
    rotary = RotaryEmbedding(8)
    pos = torch.arange(9)

    def run(p: Tensor) -> Tensor:
        return _attend(layer, x, PositionContext(9, 9, rotary=rotary(p, dtype=torch.float64)))

    base = run(pos)
    for offset in (1, 37, 1000):
        torch.testing.assert_close(run(pos + offset), base, atol=ATOL, rtol=0)
    assert (run(pos * 2) - base).abs().max() > 1e-4  # not relative-preserving -> changes


@pytest.mark.parametrize("kind", ["t5", "alibi"])
def test_bias_offset_invariance_through_attention(kind: str) -> None:
    causal = kind == "t5"
    layer, x = _layer_and_input(causal)
    torch.manual_seed(2)
    module = T5RelativePositionBias(HEADS, causal=True) if causal else AlibiPositionalBias(HEADS)
    pos = torch.arange(9)

    def run(p: Tensor) -> Tensor:
        return _attend(layer, x, PositionContext(9, 9, bias=module(p, p)))

    base = run(pos)
    for offset in (3, 500):
        torch.testing.assert_close(run(pos + offset), base, atol=ATOL, rtol=0)
    assert (run(pos * 3) - base).abs().max() > 1e-4
