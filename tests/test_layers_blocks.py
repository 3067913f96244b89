"""Layer building blocks checked against formulas written independently here (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from x_attn.config import FeedForwardConfig
from x_attn.layers.feedforward import FeedForward
from x_attn.layers.norms import LayerNorm, RMSNorm, ScaleNorm, make_norm
from x_attn.layers.pattern import layer_types, macaron_ff_scale
from x_attn.layers.residual import GRUGating, Residual, ReZeroResidual, make_residual

DIM = 16


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _randomize(module: nn.Module, seed: int = 1) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def _gelu(t: torch.Tensor) -> torch.Tensor:  # exact GELU: x * Phi(x)
    return 0.5 * t * (1.0 + torch.erf(t / math.sqrt(2.0)))


def _sigmoid(t: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + torch.exp(-t))


# ---------------------------------------------------------------- norms


def test_rmsnorm_matches_formula_with_gain():
    norm = _randomize(RMSNorm(DIM, eps=1e-6)).double()
    x = _x(2, 5, DIM)
    g = norm.g.detach()
    rms = [[math.sqrt(sum(v * v for v in row.tolist()) / DIM + 1e-6) for row in b] for b in x]
    expected = x / torch.tensor(rms, dtype=torch.float64).unsqueeze(-1) * g
    torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-12)


def test_rmsnorm_init_gives_unit_rms_and_is_scale_invariant():
    norm = RMSNorm(DIM).double()
    x = _x(3, 4, DIM)
    out = norm(x)
    torch.testing.assert_close(out.pow(2).mean(-1), torch.ones(3, 4, dtype=torch.float64))
    # invariant up to eps = 1e-8 in the mean square (relative effect ~ eps / mean(x^2))
    torch.testing.assert_close(norm(7.5 * x), out, rtol=1e-7, atol=1e-7)
    assert not torch.allclose(norm(7.5 * x), 7.5 * out)
    assert torch.equal(norm(torch.zeros(2, DIM, dtype=torch.float64)), torch.zeros(2, DIM).double())


def test_scalenorm_matches_formula_and_init():
    norm = ScaleNorm(DIM).double()
    assert norm.g.shape == () and norm.g.item() == pytest.approx(math.sqrt(DIM))
    with torch.no_grad():
        norm.g.fill_(1.7)
    x = _x(2, 5, DIM)
    lengths = [[math.sqrt(sum(v * v for v in row.tolist())) for row in b] for b in x]
    expected = 1.7 * x / torch.tensor(lengths, dtype=torch.float64).unsqueeze(-1)
    torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("c", [1e-3, 0.5, 3.0, 250.0])
def test_scalenorm_scale_invariance(c):
    norm = ScaleNorm(DIM).double()
    x = _x(2, 6, DIM)
    torch.testing.assert_close(norm(c * x), norm(x), rtol=1e-10, atol=1e-10)


def test_scalenorm_clamps_small_norms_with_eps():
    norm = ScaleNorm(DIM, eps=1e-2).double()
    tiny = torch.full((DIM,), 1e-6, dtype=torch.float64)  # ||tiny|| = 4e-6 < eps
    torch.testing.assert_close(norm(tiny), math.sqrt(DIM) * tiny / 1e-2)
    assert torch.equal(norm(torch.zeros(DIM).double()), torch.zeros(DIM).double())


def test_make_norm_kinds_and_error():
    norm = make_norm("layernorm", DIM)  # nn.LayerNorm with float32 statistics for halves
    assert type(norm) is LayerNorm and isinstance(norm, nn.LayerNorm)
    assert type(make_norm("rmsnorm", DIM)) is RMSNorm
    assert type(make_norm("scalenorm", DIM)) is ScaleNorm
    with pytest.raises(ValueError, match="'layernorm', 'rmsnorm', 'scalenorm'") as info:
        make_norm("batchnorm", DIM)
    assert "batchnorm" in str(info.value)


def test_norm_argument_errors():
    with pytest.raises(ValueError, match="eps"):
        RMSNorm(DIM, eps=0.0)
    with pytest.raises(ValueError, match="dim"):
        ScaleNorm(0)


# ---------------------------------------------------------------- feed-forward


def _ff_weights(ff: FeedForward):
    return (
        ff.proj_in.weight.detach(),
        ff.proj_in.bias,
        ff.proj_out.weight.detach(),
        ff.proj_out.bias,
    )


def test_feedforward_plain_matches_formula():
    ff = FeedForward(DIM, mult=2).double()
    w1, b1, w2, b2 = _ff_weights(ff)
    assert w1.shape == (2 * DIM, DIM) and w2.shape == (DIM, 2 * DIM)
    x = _x(2, 5, DIM)
    expected = _gelu(x @ w1.T + b1) @ w2.T + b2
    torch.testing.assert_close(ff(x), expected.detach(), rtol=1e-12, atol=1e-12)


def test_feedforward_glu_is_value_times_gelu_gate():
    ff = FeedForward(DIM, mult=2, glu=True, dim_out=8).double()
    w1, b1, w2, b2 = _ff_weights(ff)
    inner = 2 * DIM
    assert w1.shape == (2 * inner, DIM) and w2.shape == (8, inner)
    x = _x(2, 5, DIM)
    value = x @ w1[:inner].T + b1[:inner]
    gate = x @ w1[inner:].T + b1[inner:]
    expected = (value * _gelu(gate)) @ w2.T + b2
    out = ff(x)
    assert out.shape == (2, 5, 8)
    torch.testing.assert_close(out, expected.detach(), rtol=1e-12, atol=1e-12)


def test_feedforward_swish_uses_silu_and_swiglu():
    x = _x(2, 5, DIM)
    for glu in (False, True):
        ff = FeedForward(DIM, mult=1.5, glu=glu, swish=True).double()
        assert isinstance(ff.act, nn.SiLU)
        w1, b1, w2, b2 = _ff_weights(ff)
        h = x @ w1.T + b1
        if glu:
            value, gate = h[..., : int(DIM * 1.5)], h[..., int(DIM * 1.5) :]
            h = value * gate * _sigmoid(gate)
        else:
            h = h * _sigmoid(h)
        torch.testing.assert_close(ff(x), (h @ w2.T + b2).detach(), rtol=1e-12, atol=1e-12)


def test_feedforward_no_bias_has_no_bias_params():
    ff = FeedForward(DIM, no_bias=True, glu=True)
    assert ff.proj_in.bias is None and ff.proj_out.bias is None
    assert all("bias" not in name for name, _ in ff.named_parameters())
    assert any("bias" in name for name, _ in FeedForward(DIM).named_parameters())


def test_feedforward_kwargs_equal_config():
    opts = dict(mult=3, glu=True, swish=True, no_bias=True, dropout=0.1)
    a = FeedForward(DIM, **opts)
    b = FeedForward(DIM, FeedForwardConfig(**opts))
    assert a.config == b.config == FeedForwardConfig(**opts)
    b.load_state_dict(a.state_dict())  # same parameter names and shapes
    a.eval(), b.eval()
    x = torch.randn(2, 4, DIM)
    torch.testing.assert_close(a(x), b(x))
    assert a.proj_in.weight.shape == (2 * 3 * DIM, DIM) and a.dropout.p == 0.1


def test_feedforward_dropout_applies_in_training_only():
    ff = FeedForward(DIM, dropout=0.5).double()
    x = _x(4, 8, DIM)
    ff.eval()
    torch.testing.assert_close(ff(x), ff(x))
    ff.train()
    torch.manual_seed(0)
    assert not torch.allclose(ff(x), ff.eval()(x))


def test_feedforward_argument_errors():
    with pytest.raises(TypeError, match="did you mean 'glu'"):
        FeedForward(DIM, gluu=True)
    with pytest.raises(TypeError, match="did you mean 'mult'"):
        FeedForward(DIM, mul=2)
    with pytest.raises(TypeError, match="not both"):
        FeedForward(DIM, FeedForwardConfig(), glu=True)
    with pytest.raises(TypeError, match="FeedForwardConfig"):
        FeedForward(DIM, {"glu": True})
    with pytest.raises(ValueError, match="ff_mult"):
        FeedForward(DIM, mult=0)
    with pytest.raises(ValueError, match="ff_dropout"):
        FeedForward(DIM, dropout=1.0)
    with pytest.raises(ValueError, match="mult"):
        FeedForward(4, mult=0.1)


# ---------------------------------------------------------------- residual rules


def test_residual_scale():
    branch, residual = _x(2, 3, DIM, seed=1), _x(2, 3, DIM, seed=2)
    torch.testing.assert_close(Residual(DIM)(branch, residual), branch + residual)
    torch.testing.assert_close(Residual(DIM, scale=0.5)(branch, residual), residual + branch / 2)
    with pytest.raises(ValueError, match="scale"):
        Residual(DIM, scale=0.0)


def test_rezero_identity_at_init_and_alpha_gets_gradient():
    rule = ReZeroResidual(DIM, scale=0.5).double()
    branch = _x(2, 3, DIM, seed=1).requires_grad_()
    residual = _x(2, 3, DIM, seed=2)
    out = rule(branch, residual)
    assert torch.equal(out, residual)
    out.sum().backward()
    # d(out.sum())/d(alpha) = scale * sum(branch), nonzero although alpha == 0
    torch.testing.assert_close(rule.alpha.grad, 0.5 * branch.detach().sum())
    assert rule.alpha.grad.abs() > 0
    with torch.no_grad():
        rule.alpha.fill_(0.3)
    torch.testing.assert_close(rule(branch, residual), residual + 0.15 * branch)


def _gtrxl_by_hand(gate: GRUGating, branch, residual, scale):
    """The paper's equations, written from the module's weight matrices."""
    W = {k: getattr(gate, k).weight.detach() for k in ("w_r", "u_r", "w_z", "u_z", "w_g", "u_g")}
    x, y = residual, scale * branch
    r = _sigmoid(y @ W["w_r"].T + x @ W["u_r"].T)
    z = _sigmoid(y @ W["w_z"].T + x @ W["u_z"].T - gate.b_g.detach())
    h = torch.tanh(y @ W["w_g"].T + (r * x) @ W["u_g"].T)
    return (1 - z) * x + z * h


def test_gru_gating_follows_paper_equations():
    gate = _randomize(GRUGating(DIM, scale=0.7), seed=3).double()
    gate.w_r.weight.data.mul_(0.3)  # keep the sigmoids/tanh away from saturation
    branch, residual = _x(2, 5, DIM, seed=4), _x(2, 5, DIM, seed=5)
    expected = _gtrxl_by_hand(gate, branch, residual, 0.7)
    torch.testing.assert_close(gate(branch, residual), expected, rtol=1e-12, atol=1e-12)
    assert not any(isinstance(m, (nn.GRUCell, nn.GRU)) for m in gate.modules())
    assert all(getattr(gate, k).bias is None for k in ("w_r", "u_r", "w_z", "u_z", "w_g", "u_g"))


def test_gru_gating_near_identity_with_zero_weights():
    branch, residual = _x(2, 5, DIM, seed=6), _x(2, 5, DIM, seed=7)
    for b_g in (2.0, 10.0):
        gate = GRUGating(DIM, gate_bias=b_g).double()
        assert torch.equal(gate.b_g.detach(), torch.full((DIM,), b_g, dtype=torch.float64))
        with torch.no_grad():
            for name, p in gate.named_parameters():
                if name != "b_g":
                    p.zero_()
        # z = sigmoid(-b_g), h = tanh(0) = 0  ->  out = (1 - sigmoid(-b_g)) * x
        keep = 1.0 - 1.0 / (1.0 + math.exp(b_g))
        torch.testing.assert_close(gate(branch, residual), keep * residual)
    assert keep > 1 - 1e-4  # large b_g: the gate is the identity map


def test_make_residual_choice_and_refusal():
    assert type(make_residual(DIM, rezero=False, gated=False)) is Residual
    assert type(make_residual(DIM, rezero=True, gated=False)) is ReZeroResidual
    gated = make_residual(DIM, rezero=False, gated=True, scale=0.5)
    assert type(gated) is GRUGating and gated.scale == 0.5
    assert make_residual(DIM, rezero=False, gated=False, scale=0.5).scale == 0.5
    with pytest.raises(ValueError, match="choose one"):
        make_residual(DIM, rezero=True, gated=True)


# ---------------------------------------------------------------- layer pattern


def test_layer_types_default_cross_only_cross():
    assert layer_types(3) == ("a", "f") * 3
    assert layer_types(2, cross_attend=True) == ("a", "c", "f", "a", "c", "f")
    assert layer_types(2, only_cross=True) == ("c", "f", "c", "f")
    assert layer_types(2, only_cross=True, cross_attend=True) == ("c", "f", "c", "f")


def test_layer_types_macaron_and_scales():
    types = layer_types(2, macaron=True)
    assert types == ("f", "a", "f", "f", "a", "f")
    assert layer_types(1, macaron=True, cross_attend=True) == ("f", "a", "c", "f")
    assert layer_types(1, macaron=True, only_cross=True) == ("f", "c", "f")
    assert macaron_ff_scale(types, True) == (0.5, 1.0, 0.5, 0.5, 1.0, 0.5)
    assert macaron_ff_scale(types, False) == (1.0,) * 6
    with pytest.raises(ValueError, match="'x'"):
        macaron_ff_scale(("a", "x"), True)


def test_layer_types_sandwich():
    assert layer_types(6, sandwich_coef=6) == ("a",) * 6 + ("f",) * 6
    assert layer_types(6, sandwich_coef=2) == ("a", "a") + ("a", "f") * 4 + ("f", "f")
    assert layer_types(6, sandwich_coef=1) == ("a",) + ("a", "f") * 5 + ("f",)
    for depth in (1, 4):
        for k in range(1, depth + 1):
            types = layer_types(depth, sandwich_coef=k)
            assert types.count("a") == types.count("f") == depth


def test_layer_types_custom():
    custom = ("a", "a", "c", "f", "f")
    assert layer_types(1, custom_layers=custom) == custom
    assert layer_types(2, custom_layers=["f", "a"]) == ("f", "a")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(depth=0), ValueError, "depth"),
        (dict(depth=2.0), TypeError, "depth"),
        (dict(depth=6, sandwich_coef=0), ValueError, r"sandwich_coef.*\[1, depth=6\]"),
        (dict(depth=6, sandwich_coef=7), ValueError, r"sandwich_coef.*\[1, depth=6\]"),
        (dict(depth=6, sandwich_coef=2, macaron=True), ValueError, "macaron"),
        (dict(depth=6, sandwich_coef=2, cross_attend=True), ValueError, "cross-attention"),
        (dict(depth=6, sandwich_coef=2, only_cross=True), ValueError, "cross-attention"),
        (dict(depth=2, custom_layers=("a", "x", "f")), ValueError, "'x' at position 1"),
        (dict(depth=2, custom_layers=()), ValueError, "empty"),
        (dict(depth=2, custom_layers="af"), TypeError, "tuple"),
        (dict(depth=2, custom_layers=("a", "f"), macaron=True), ValueError, "macaron"),
        (dict(depth=2, custom_layers=("a", "f"), sandwich_coef=1), ValueError, "sandwich"),
    ],
)
def test_layer_types_refusals(kwargs, error, match):
    with pytest.raises(error, match=match):
        layer_types(**kwargs)
