"""Stack flags against x-transformers itself: same weights, same outputs (float64).

Skipped when x-transformers is not installed. The weights travel through
:func:`x_attn.interop.from_x_transformers` (x-transformers keeps each layer as (norms, block,
residual) with the block wrapped by LayerScale / Scale / ShiftTokens, stores ``gain - 1`` for
its stack norms and LayerScale and has no norm biases).

Shape legend: b batch, n sequence, d model dim, dc condition dim.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import x_attn
from x_attn.interop import from_x_transformers

xt = pytest.importorskip("x_transformers")

D, B, N, DC = 16, 2, 7, 5
# attn_flash: x-transformers' manual path takes its softmax in float32; its SDPA path is float64
BASE = dict(dim=D, depth=2, heads=2, attn_dim_head=8, attn_flash=True)


def pair(stack: str = "Decoder", **flags) -> tuple[nn.Module, nn.Module]:
    """(x_attn, x-transformers) stacks with the same weights, float64, eval mode."""
    flags = {**BASE, **flags}
    torch.manual_seed(0)
    theirs = getattr(xt, stack)(**flags).double().eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.2 * torch.randn_like(p))
    ours = getattr(x_attn, stack)(**flags).double().eval()
    from_x_transformers(theirs, ours)
    return ours, theirs


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def same(ours, theirs, **kwargs) -> None:
    x = rand(B, N, D)
    torch.testing.assert_close(ours(x, **kwargs), theirs(x, **kwargs), rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "flags",
    [
        dict(use_layerscale=True, layerscale_init_value=0.3),
        dict(scale_residual=True, scale_residual_constant=0.8),
        dict(scale_residual=0.5),  # x-transformers: branch * 0.5 and a learned residual scale
        dict(sandwich_norm=True),
        dict(sandwich_norm=True, macaron=True, use_layerscale=True),
        dict(pre_norm_has_final_norm=False),
        dict(softclamp_output=True, softclamp_output_value=1.5),
        dict(use_simple_rmsnorm=True),
        dict(zero_init_branch_output=True),
        dict(weight_tie_layers=True),
        dict(layers_execute_order=(2, 3, 0, 1, 2, 3)),
        dict(depth=None, custom_layers=("a", "f", "f", "a")),
        dict(ff_relu_squared=True, ff_post_act_ln=True),
        dict(ff_custom_activation=nn.Sigmoid()),
        dict(ff_softclamp_value=0.5),
        dict(ff_glu=True, ff_glu_mult_bias=True),
        dict(ff_glu=True, ff_swish=True, ff_glu_softclamp=True, ff_glu_gate_softclamp_value=0.7),
        dict(ff_mult=(1, 3), attn_dropout=(0.0, 0.0)),
        dict(shift_tokens=2),
        dict(shift_tokens=(1, 0, 0, 2)),
    ],
    ids=lambda f: ",".join(f),
)
def test_decoder_flag_matches_x_transformers(flags):
    same(*pair(**flags))


def test_post_norm_and_pre_and_post_norm_match():
    same(*pair(pre_norm=False))
    same(*pair(pre_and_post_norm=True))


def test_encoder_shift_tokens_matches_without_padding():
    """x-transformers masks padding before shifting only in attention layers; without padding the
    two agree exactly (x_attn masks it in every layer, see docs/compat.md)."""
    same(*pair("Encoder", shift_tokens=1))


@pytest.mark.parametrize(
    "flags",
    [
        dict(use_adaptive_layernorm=True, use_adaptive_layerscale=True, dim_condition=DC),
        dict(use_adaptive_rmsnorm=True, adaptive_condition_mlp=True, dim_condition=DC),
    ],
    ids=["adaptive_layernorm", "adaptive_rmsnorm"],
)
@pytest.mark.parametrize("per_token", [False, True])
def test_adaptive_norms_match(flags, per_token):
    condition = rand(B, N, DC, seed=4) if per_token else rand(B, DC, seed=4)
    same(*pair(**flags), condition=condition)


def test_per_call_causal_matches_x_transformers_manual_path():
    """x-transformers' fused path keeps the stack's causal flag whatever the call says; its manual
    path (softmax in float32, hence the tolerance) follows it, like every x_attn kernel."""
    ours, theirs = pair(depth=3, attn_flash=False)
    x = rand(B, N, D)
    for causal in (False, True):
        got, want = ours(x, causal=causal), theirs(x, causal=causal)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (ours(x, causal=False) - ours(x)).abs().max() > 1e-3


def test_per_call_orders_match():
    ours, theirs = pair(depth=3)
    same(ours, theirs, repeat_blocks=((1, 2),))
    same(ours, theirs, layers_execute_order=(0, 1, 0, 1, 4, 5))


def test_layer_schedule_matches():
    for kind in ("linear", "cosine"):
        assert x_attn.layer_schedule(6, 2, 7, kind) == pytest.approx(
            xt.layer_schedule(6, 2, 7, kind)
        )
