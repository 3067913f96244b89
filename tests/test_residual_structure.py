"""Residual and norm structure of a stack, against the papers' formulas written out here.

Each reference recomputes the stack in float64 one layer after the other, with the norms,
scales and residual streams written by hand; the attention and feed-forward blocks are used as
black boxes (they are checked on their own elsewhere), so what is tested is the wiring: LayerScale
(CaiT), learned / constant residual scales, sandwich norm, pre + post norm, ResiDual, soft-clamped
output, simple RMSNorm, DyT, Derf, adaptive norms and layerscale (DiT), zero-initialised branches.

Shape legend: b batch, n sequence, d model dim, dc condition dim.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from x_attn import Decoder, Encoder
from x_attn.layers.conditioning import AdaptiveLayerScale, AdaptiveNorm

D, B, N, DC = 16, 2, 5, 6
SMALL = dict(dim=D, heads=2, attn_dim_head=8, ff_mult=2)


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    module.double().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3 + (p == 1) * 1.0)
    return module


def rand(*shape: int, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def ln(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * norm.weight + norm.bias


def branch(layer, h: Tensor) -> Tensor:
    out = layer.block(h)
    return out[0] if isinstance(out, tuple) else out


def close(a: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- branch and residual scales


def test_layerscale_multiplies_each_branch_by_its_learned_vector():
    stack = Decoder(depth=1, **SMALL, use_layerscale=True, layerscale_init_value=0.1)
    assert all(torch.equal(layer.layerscale.gamma, torch.full((D,), 0.1)) for layer in stack.layers)
    stack, x = randomize(stack), rand(B, N, D)
    for layer in stack.layers:
        x = x + layer.layerscale.gamma * branch(layer, ln(layer.norm, x))
    close(stack(rand(B, N, D)), ln(stack.final_norm, x))


def test_layerscale_default_init_makes_every_layer_the_identity():
    stack = Decoder(depth=2, **SMALL, use_layerscale=True).double()
    x = rand(B, N, D)
    close(stack(x), stack.final_norm(x))


def test_scale_residual_true_and_constant_scale_the_residual_stream():
    stack = randomize(Decoder(depth=1, **SMALL, scale_residual=True, scale_residual_constant=0.7))
    x = rand(B, N, D)
    for layer in stack.layers:
        x = branch(layer, ln(layer.norm, x)) + x * layer.residual_scale * 0.7
    close(stack(rand(B, N, D)), ln(stack.final_norm, x))


def test_scale_residual_float_scales_the_branch_output():
    """As in x-transformers, a float also gives the residual its learned scale."""
    stack = randomize(Decoder(depth=1, **SMALL, scale_residual=0.25))
    x = rand(B, N, D)
    for layer in stack.layers:
        x = x * layer.residual_scale + 0.25 * branch(layer, ln(layer.norm, x))
    close(stack(rand(B, N, D)), ln(stack.final_norm, x))


# ---------------------------------------------------------------- where the norms sit


def test_sandwich_norm_normalizes_each_branch_output():
    stack = randomize(Decoder(depth=1, **SMALL, sandwich_norm=True))
    x = rand(B, N, D)
    for layer in stack.layers:
        x = x + ln(layer.branch_norm, branch(layer, ln(layer.norm, x)))
    close(stack(rand(B, N, D)), ln(stack.final_norm, x))


def test_macaron_half_step_acts_before_the_sandwich_norm():
    """As in x-transformers: LN(0.5 * FF(...)), so the half step is absorbed by the norm."""
    stack = randomize(Encoder(depth=1, **SMALL, macaron=True, sandwich_norm=True))
    x = rand(B, N, D)
    for layer, half in zip(stack.layers, (0.5, 1.0, 0.5)):
        x = x + ln(layer.branch_norm, half * branch(layer, ln(layer.norm, x)))
    close(stack(rand(B, N, D)), ln(stack.final_norm, x))


def test_pre_and_post_norm_and_no_final_norm():
    stack = randomize(Decoder(depth=1, **SMALL, pre_and_post_norm=True))
    assert isinstance(stack.final_norm, nn.Identity)
    x = rand(B, N, D)
    for layer in stack.layers:
        x = ln(layer.post_norm, x + branch(layer, ln(layer.norm, x)))
    close(stack(rand(B, N, D)), x)


def test_pre_norm_has_final_norm_false_drops_the_final_norm():
    stack = randomize(Decoder(depth=1, **SMALL, pre_norm_has_final_norm=False))
    x = rand(B, N, D)
    for layer in stack.layers:
        x = x + branch(layer, ln(layer.norm, x))
    close(stack(rand(B, N, D)), x)


def test_resi_dual_sums_the_post_norm_stream_and_the_normed_dual_stream():
    """arXiv 2304.14802: x_{k+1} = LN(x_k + f(x_k)), d_{k+1} = d_k + f(x_k), out = x_N + LN(d_N),
    with d held times resi_dual_scale (LN removes the factor, up to its eps)."""
    stack = randomize(Decoder(depth=2, **SMALL, resi_dual=True, resi_dual_scale=0.25))
    x = dual = rand(B, N, D)
    for layer in stack.layers:
        out = branch(layer, x)
        x, dual = ln(layer.norm, x + out), dual + out
    close(stack(rand(B, N, D)), x + ln(stack.final_norm, 0.25 * dual))


def test_softclamp_output_before_the_final_norm():
    stack = randomize(Decoder(depth=1, **SMALL, softclamp_output=True, softclamp_output_value=0.5))
    x = rand(B, N, D) * 3
    for layer in stack.layers:
        x = x + branch(layer, ln(layer.norm, x))
    expected = ln(stack.final_norm, 0.5 * torch.tanh(x / 0.5))
    close(stack(rand(B, N, D) * 3), expected)


# ---------------------------------------------------------------- other norms


def _pre_norm_stack(stack, norm) -> Tensor:
    x = rand(B, N, D)
    for layer in stack.layers:
        x = x + branch(layer, norm(layer.norm, x))
    return norm(stack.final_norm, x)


def test_simple_rmsnorm_has_no_gain():
    stack = randomize(Decoder(depth=1, **SMALL, use_simple_rmsnorm=True))
    assert not any(p for layer in stack.layers for p in layer.norm.parameters())
    expected = _pre_norm_stack(stack, lambda _, x: math.sqrt(D) * x / x.norm(dim=-1, keepdim=True))
    close(stack(rand(B, N, D)), expected)


def test_dynamic_tanh_replaces_every_norm():
    stack = Decoder(depth=1, **SMALL, use_dynamic_tanh=True, dynamic_tanh_init_alpha=1.5)
    assert stack.final_norm.alpha.item() == 1.5
    stack = randomize(stack)
    expected = _pre_norm_stack(stack, lambda n, x: torch.tanh(n.alpha * x) * n.gamma + n.beta)
    close(stack(rand(B, N, D)), expected)


def test_derf_replaces_every_norm():
    stack = Decoder(depth=1, **SMALL, use_derf=True)
    assert (stack.final_norm.alpha.item(), stack.final_norm.shift.item()) == (0.5, 0.0)
    stack = randomize(stack)
    expected = _pre_norm_stack(
        stack, lambda n, x: torch.erf(n.alpha * x + n.shift) * n.gamma + n.beta
    )
    close(stack(rand(B, N, D)), expected)


# ---------------------------------------------------------------- conditioning (DiT)


def _adaptive(norm: AdaptiveNorm, x: Tensor, c: Tensor) -> Tensor:
    if norm.rms:
        normed = math.sqrt(D) * x / x.norm(dim=-1, keepdim=True)
    else:
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        normed = (x - mu) / torch.sqrt(var + 1e-5)
    return normed * (1 + c @ norm.to_gamma.weight.T)


def _gate(scale: AdaptiveLayerScale, out: Tensor, c: Tensor) -> Tensor:
    return out * torch.sigmoid(c @ scale.to_gamma.weight.T + scale.to_gamma.bias)


@pytest.mark.parametrize("per_token", [False, True])
def test_adaptive_layernorm_and_layerscale(per_token):
    stack = Decoder(
        depth=1,
        **SMALL,
        dim_condition=DC,
        use_adaptive_layernorm=True,
        use_adaptive_layerscale=True,
    )
    gate = stack.layers[0].layerscale.to_gamma
    assert not gate.weight.any() and torch.equal(gate.bias, torch.full((D,), -2.0))
    stack, x = randomize(stack), rand(B, N, D)
    c = rand(B, N, DC, seed=3) if per_token else rand(B, DC, seed=3)
    c3 = c if per_token else c[:, None]
    out = stack(x, condition=c)
    for layer in stack.layers:
        x = x + _gate(layer.layerscale, branch(layer, _adaptive(layer.norm, x, c3)), c3)
    close(out, _adaptive(stack.final_norm, x, c3))


def test_adaptive_rmsnorm_with_condition_mlp():
    stack = randomize(
        Decoder(
            depth=1,
            **SMALL,
            dim_condition=DC,
            use_adaptive_rmsnorm=True,
            adaptive_condition_mlp=True,
            adaptive_condition_mlp_expansion=2,
        )
    )
    x, c = rand(B, N, D), rand(B, DC, seed=3)
    out = stack(x, condition=c)
    hidden = nn.functional.silu(c @ stack.condition_mlp[0].weight.T)[:, None]
    assert hidden.shape == (B, 1, 2 * DC)
    for layer in stack.layers:
        x = x + branch(layer, _adaptive(layer.norm, x, hidden))
    close(out, _adaptive(stack.final_norm, x, hidden))


def test_adaptive_norms_start_as_plain_norms():
    """W = 0 at init: the gain is 1 whatever the condition."""
    stack = Decoder(depth=1, **SMALL, dim_condition=DC, use_adaptive_layernorm=True).double()
    x = rand(B, N, D)
    close(stack(x, condition=rand(B, DC)), stack(x, condition=rand(B, DC, seed=9)))


@pytest.mark.parametrize(
    "condition, match",
    [
        (None, "pass condition"),
        (torch.zeros(B, DC + 1), "dim_condition=6"),
        (torch.zeros(B + 1, DC), "batch=2"),
        (torch.zeros(B, N + 1, DC), "seq=5"),
    ],
)
def test_condition_is_checked(condition, match):
    stack = Decoder(depth=1, **SMALL, dim_condition=DC, use_adaptive_rmsnorm=True)
    with pytest.raises(ValueError, match=match):
        stack(torch.zeros(B, N, D), condition=condition)


def test_condition_without_adaptive_parts_is_refused_and_dim_condition_alone_warns():
    with pytest.warns(UserWarning, match="dim_condition has no effect"):
        stack = Decoder(depth=1, **SMALL, dim_condition=DC)
    with pytest.raises(ValueError, match="nothing in this stack reads it"):
        stack(torch.zeros(B, N, D), condition=torch.zeros(B, DC))
    with pytest.raises(ValueError, match="adaptive_condition_mlp"):
        Decoder(depth=1, **SMALL, adaptive_condition_mlp=True)


# ---------------------------------------------------------------- zero init


def test_zero_init_branch_output_makes_the_stack_the_final_norm():
    stack = Decoder(depth=2, **SMALL, cross_attend=True, zero_init_branch_output=True).double()
    for layer in stack.layers:
        out = layer.block.to_out if layer.kind != "f" else layer.block.proj_out
        assert not out.weight.any()
    x, context = rand(B, N, D), rand(B, 3, D, seed=4)
    close(stack(x, context=context), stack.final_norm(x))
    aoa = Decoder(depth=1, **SMALL, attn_on_attn=True, zero_init_branch_output=True).double()
    close(aoa(x), aoa.final_norm(x))


def test_ff_zero_init_output():
    stack = Decoder(depth=1, **SMALL, ff_zero_init_output=True)
    assert not stack.layers[1].block.proj_out.weight.any()
    assert stack.layers[0].block.to_out.weight.any()


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "flags, match",
    [
        (dict(sandwich_norm=True, pre_norm=False), "sandwich_norm"),
        (dict(resi_dual=True, pre_norm=True), "resi_dual.*pre_norm=True"),
        (dict(resi_dual=True, sandwich_norm=True), "sandwich_norm"),
        (dict(resi_dual=True, resi_dual_scale=1.5), "resi_dual_scale"),
        (dict(resi_dual_scale=0.5), "resi_dual_scale"),
        (dict(use_layerscale=True, use_adaptive_layerscale=True), "choose one"),
        (dict(layerscale_init_value=0.1), "use_layerscale"),
        (dict(softclamp_output_value=3.0), "softclamp_output"),
        (dict(pre_and_post_norm=True, pre_norm=False), "pre_and_post_norm"),
        (dict(pre_norm=False, pre_norm_has_final_norm=False), "pre_norm_has_final_norm"),
        (dict(scale_residual=-1.0), "scale_residual"),
        (dict(use_dynamic_tanh=True, pre_norm=False), "use_dynamic_tanh"),
        (dict(use_rmsnorm=True, use_simple_rmsnorm=True), "choose one normalisation"),
    ],
)
def test_structure_flags_that_cannot_work_are_refused(flags, match):
    with pytest.raises(ValueError, match=match):
        Decoder(depth=1, **SMALL, **flags)


@pytest.mark.parametrize(
    "flags, name",
    [
        (dict(layer_dropout=0.1), "layer_dropout"),
        (dict(shift_tokens=1), "shift_tokens"),
        (dict(weight_tie_layers=True), "weight_tie_layers"),
        (dict(layers_execute_order=(2, 3, 0, 1)), "layers_execute_order"),
        (dict(resi_dual=True), "resi_dual"),
        (dict(pre_and_post_norm=True), "pre_and_post_norm"),
        (dict(scale_residual=True), "scale_residual"),
        (dict(use_adaptive_layernorm=True), "adaptive"),
    ],
)
def test_reversible_refuses_what_its_two_streams_cannot_run(flags, name):
    with pytest.raises(ValueError, match=f"reversible.*{name}"):
        Decoder(depth=2, **SMALL, reversible=True, **flags)


def test_reversible_runs_layerscale_and_sandwich_norm_in_its_branches():
    """y1 = x1 + LN_b(g * Attn(LN x2)), y2 = x2 + LN_b(g * FF(LN y1)), out = LN((y1 + y2) / 2)."""
    flags = dict(use_layerscale=True, sandwich_norm=True)
    stack = randomize(Decoder(depth=2, **SMALL, reversible=True, **flags))
    x1 = x2 = rand(B, N, D)
    layers = list(stack.layers)
    for attn, ff in zip(layers[0::2], layers[1::2]):

        def f(layer, h):
            return ln(layer.branch_norm, layer.layerscale.gamma * branch(layer, h))

        y1 = x1 + f(attn, ln(attn.norm, x2))
        x1, x2 = y1, x2 + f(ff, ln(ff.norm, y1))
    close(stack(rand(B, N, D)), ln(stack.final_norm, (x1 + x2) / 2))
