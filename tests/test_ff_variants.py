"""Feed-forward variants against their formulas, written out here in float64 from the weights.

relu^2 (Primer), SoLU, a custom activation module, a LayerNorm after the activation
(NormFormer), soft clamping ``c tanh(t / c)`` of the hidden layer, the soft-clamped GLU
(``softclamp(u, b_u) * softclamp(g, b_g) * Phi(g)``, SiLU form ``* sigmoid(g)``), the GLU output
multiplier, per-layer values and the refusals.

Shape legend: b batch, n sequence, d model dim, e hidden dim.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from x_attn import Decoder, FeedForward, layer_schedule

D = 8


def rand(*shape: int, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def randomized(**options) -> FeedForward:
    ff = FeedForward(D, mult=2, **options).double()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ff.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return ff


def linear(layer: nn.Linear, x: Tensor) -> Tensor:
    return x @ layer.weight.T + (0 if layer.bias is None else layer.bias)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * weight + bias


def softclamp(t: Tensor, c: float) -> Tensor:
    return c * torch.tanh(t / c)


def phi(t: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(t / 2**0.5))


def close(a: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


X = rand(2, 3, D) * 3


def test_relu_squared():
    ff = randomized(relu_squared=True)
    close(ff(X), linear(ff.proj_out, F.relu(linear(ff.proj_in, X)) ** 2))


def test_solu():
    ff = randomized(solu=True)
    h = linear(ff.proj_in, X)
    h = layer_norm(h * h.softmax(-1), ff.act.norm.weight, ff.act.norm.bias)
    close(ff(X), linear(ff.proj_out, h))


def test_custom_activation_is_copied_per_layer():
    act = nn.PReLU(init=0.2).double()
    stack = Decoder(dim=D, depth=2, heads=1, attn_dim_head=4, ff_custom_activation=act)
    first, second = stack.layers[1].block.act, stack.layers[3].block.act
    assert first is not act and second is not first
    ff = randomized(custom_activation=nn.Sigmoid())
    close(ff(X), linear(ff.proj_out, torch.sigmoid(linear(ff.proj_in, X))))


def test_post_act_ln():
    ff = randomized(post_act_ln=True, swish=True)
    h = F.silu(linear(ff.proj_in, X))
    h = layer_norm(h, ff.post_act_norm.weight, ff.post_act_norm.bias)
    close(ff(X), linear(ff.proj_out, h))


def test_softclamp_value_clamps_before_the_activation():
    ff = randomized(softclamp_value=0.7)
    expected = linear(ff.proj_out, F.gelu(softclamp(linear(ff.proj_in, X), 0.7)))
    close(ff(X), expected)
    assert linear(ff.proj_in, X).abs().max() > 2  # the clamp is active


@pytest.mark.parametrize("swish", [False, True])
def test_glu_softclamp_and_mult_bias(swish):
    ff = randomized(
        glu=True,
        swish=swish,
        glu_softclamp=True,
        glu_gate_softclamp_value=0.9,
        glu_up_softclamp_value=1.3,
        glu_mult_bias=True,
    )
    up, gate = linear(ff.proj_in, X).chunk(2, dim=-1)
    factor = torch.sigmoid(gate) if swish else phi(gate)
    hidden = softclamp(up, 1.3) * softclamp(gate, 0.9) * factor * ff.mult_bias
    close(ff(X), linear(ff.proj_out, hidden))


@pytest.mark.parametrize("swish", [False, True])
@pytest.mark.parametrize("grad_mode", ["grad", "no_grad", "inference_mode"])
def test_glu_values_and_gradients_match_the_formula(swish, grad_mode):
    """GLU computes its halves as two matmuls and, without autograd, multiplies in place:
    values in every grad mode and the proj_in gradient equal ``(x W_u^T) * act(x W_g^T)``."""
    ff = randomized(glu=True, swish=swish)
    up, gate = linear(ff.proj_in, X).chunk(2, dim=-1)
    expected = linear(ff.proj_out, up * (F.silu(gate) if swish else F.gelu(gate)))
    modes = {"grad": torch.enable_grad, "no_grad": torch.no_grad}
    with modes.get(grad_mode, torch.inference_mode)():
        got = ff(X)
    close(got.detach(), expected.detach())
    if grad_mode == "grad":
        (w_ours,) = torch.autograd.grad(got.square().sum(), ff.proj_in.weight)
        (w_ref,) = torch.autograd.grad(expected.square().sum(), ff.proj_in.weight)
        close(w_ours, w_ref)


def test_sublayer_dropout_drops_the_output():
    ff = FeedForward(D, sublayer_dropout=0.5).train()
    out = ff(torch.randn(4, 50, D))
    assert 0.3 < (out == 0).float().mean() < 0.7


# ---------------------------------------------------------------- per-layer values


def test_layer_schedule_formulas():
    assert layer_schedule(0.0, 1.0, 5, "linear") == pytest.approx((0, 0.25, 0.5, 0.75, 1))
    cosine = layer_schedule(6.0, 2.0, 3, "cosine")  # 6 + (2 - 6) (1 - cos(pi t)) / 2
    assert cosine == pytest.approx((6.0, 4.0, 2.0))
    assert layer_schedule(0, 1, 3, lambda s, e, t: t**2) == pytest.approx((0, 0.25, 1))
    with pytest.raises(ValueError, match="depth"):
        layer_schedule(0, 1, 1)
    with pytest.raises(ValueError, match="schedule"):
        layer_schedule(0, 1, 3, "exp")


def test_per_layer_values_reach_each_layer():
    mults = (1, 2, 3)
    stack = Decoder(
        dim=D, depth=3, heads=1, attn_dim_head=4, ff_mult=mults, attn_dropout=(0, 0.1, 0.2)
    )
    ffs = [layer.block for layer in stack.layers if layer.kind == "f"]
    assert [ff.proj_in.out_features for ff in ffs] == [D * m for m in mults]
    attns = [layer.block for layer in stack.layers if layer.kind == "a"]
    assert [a.config.dropout for a in attns] == [0, 0.1, 0.2]


def test_per_layer_attn_values_are_not_inherited_by_cross_attention():
    stack = Decoder(
        dim=D, depth=2, heads=1, attn_dim_head=4, cross_attend=True, attn_dropout=(0.1, 0.2)
    )
    cross = [layer.block for layer in stack.layers if layer.kind == "c"]
    assert [c.config.dropout for c in cross] == [0.0, 0.0]


@pytest.mark.parametrize(
    "flags, error, match",
    [
        (dict(ff_mult=(2, 3)), ValueError, "'ff_mult' has 2 values.*3 'f' layers"),
        (dict(ff_mult=(2, 0, 1)), ValueError, "ff_mult"),
        (dict(attn_dim_head=(4, 8, 8), rotary_pos_emb=True), ValueError, "rotary"),
        (dict(ff_relu_squared=True, ff_swish=True), ValueError, "choose one"),
        (dict(ff_custom_activation="relu"), TypeError, "torch.nn.Module"),
        (dict(ff_glu_softclamp=True), ValueError, "ff_glu=True"),
        (dict(ff_glu=True, ff_glu_softclamp=True, ff_relu_squared=True), ValueError, "GELU"),
        (dict(ff_softclamp_value=0.0), ValueError, "ff_softclamp_value"),
    ],
)
def test_ff_flags_that_cannot_work_are_refused(flags, error, match):
    with pytest.raises(error, match=match):
        Decoder(**{**dict(dim=D, depth=3, heads=1, attn_dim_head=4), **flags})


@pytest.mark.parametrize(
    "flags, name",
    [
        (dict(ff_glu=True, ff_softclamp_value=5.0), "ff_softclamp_value"),
        (dict(ff_glu_gate_softclamp_value=5.0), "ff_glu_gate_softclamp_value"),
        (dict(ff_glu_mult_bias=True), "ff_glu_mult_bias"),
    ],
)
def test_flags_x_transformers_ignores_warn(flags, name):
    with pytest.warns(UserWarning, match=f"{name} has no effect"):
        Decoder(dim=D, depth=1, heads=1, attn_dim_head=4, **flags)


def test_no_warning_for_flags_that_act():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Decoder(dim=D, depth=1, heads=1, attn_dim_head=4, ff_softclamp_value=5.0)
