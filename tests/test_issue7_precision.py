"""Issue 7 item 6: the manual kernel in every dtype, and score features under autocast.

The manual kernel must agree with the fused one (SDPA) and with the float64 reference in
float16, bfloat16, float32 and float64, also where q.k^T exceeds float16's range before the
scale brings it back (|q| = |k| = 40 * sqrt(64): q.q = 102400 > 65504). Under
``torch.autocast`` the score features (talking heads, top-k, entmax, residual attention) must
run, and fused and manual layers must agree in values and gradients.

Shape legend: b batch, h heads, i queries, j keys, dh head dim, d model dim.
"""

from __future__ import annotations

import pytest
import torch
from reference import reference_attention, reference_probs
from torch import Tensor

from x_attn import Attention, Decoder
from x_attn.kernels.inputs import AttnInputs
from x_attn.kernels.manual import manual_attention
from x_attn.kernels.sdpa import sdpa_attention

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
TOL = {torch.float16: 2e-3, torch.bfloat16: 2e-2, torch.float32: 1e-5, torch.float64: 1e-12}
DH = 64
SCALE = 1 / (1600 * 8)  # brings q.k^T ~ 1e5 back to logits ~ 8


def large_inputs(case: str, dtype: torch.dtype) -> AttnInputs:
    """q.k^T overflows float16 on the keys equal to the queries; logits stay moderate."""
    g = torch.Generator().manual_seed(0)
    q = 40 * torch.randn(2, 2, 5, DH, generator=g, dtype=torch.float64)
    k = torch.cat((q, 40 * torch.randn(2, 2, 3, DH, generator=g, dtype=torch.float64)), dim=2)
    v = torch.randn(2, 2, 8, DH, generator=g, dtype=torch.float64)
    mask = bias = None
    if case == "mask+bias":
        mask = torch.rand(2, 1, 5, 8, generator=g) > 0.3
        mask[0, 0, 1] = False  # one query with no visible key
        bias = torch.randn(1, 2, 5, 8, generator=g, dtype=torch.float64)
    return AttnInputs(
        q.to(dtype),
        k.to(dtype),
        v.to(dtype),
        mask=mask,
        bias=None if bias is None else bias.to(dtype),
        causal=case == "causal",
        scale=SCALE,
    )


def close(got: Tensor, expected: Tensor, dtype: torch.dtype) -> None:
    tol = TOL[dtype]
    torch.testing.assert_close(got.double(), expected.double(), atol=tol, rtol=tol)


@pytest.mark.parametrize("case", ["plain", "causal", "mask+bias"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_manual_and_fused_match_float64_reference_in_every_dtype(dtype, case):
    inputs = large_inputs(case, dtype)
    ref_args = dict(mask=inputs.mask, bias=inputs.bias, causal=inputs.causal, scale=SCALE)
    expected = reference_attention(inputs.q, inputs.k, inputs.v, **ref_args)
    manual, maps = manual_attention(inputs)
    fused = sdpa_attention(inputs)
    assert manual.dtype == fused.dtype == dtype
    close(manual, expected, dtype)
    close(fused, expected, dtype)
    close(maps.probs, reference_probs(inputs.q, inputs.k, inputs.v, **ref_args), dtype)


SCORE_FLAGS = [
    {"attn_flash": False},
    {"attn_talking_heads": True},
    {"attn_pre_talking_heads": True},
    {"attn_post_talking_heads": True},
    {"attn_sparse_topk": 2},
    {"attn_use_entmax15": True},
    {"residual_attn": True},
]


def twin_stacks(flags: dict, seed: int = 0) -> tuple[Decoder, Decoder]:
    """The same weights twice: on its default kernel (``flags``) and with the manual kernel."""
    torch.manual_seed(seed)
    base = Decoder(dim=16, depth=2, heads=2, attn_dim_head=8, **flags)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.3 * torch.randn_like(p))
    manual = Decoder(dim=16, depth=2, heads=2, attn_dim_head=8, **{"attn_flash": False, **flags})
    manual.load_state_dict(base.state_dict())
    return base, manual


def run(stack: Decoder, x: Tensor, mask: Tensor, autocast: torch.dtype | None, **kw):
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        out = stack(x, mask=mask, **kw)
    out.float().square().sum().backward()
    return out, x.grad


@pytest.mark.parametrize("autocast", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("flags", SCORE_FLAGS, ids=lambda f: next(iter(f)))
def test_score_features_run_under_autocast_and_match_float32(flags, autocast):
    stack, _ = twin_stacks(flags)
    x = torch.randn(2, 6, 16)
    mask = torch.tensor([[True] * 6, [False, False] + [True] * 4])
    out, grad = run(stack, x, mask, autocast)
    ref_out, ref_grad = run(stack, x, mask, None)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(out.float(), ref_out, atol=0.1, rtol=0.05)
    torch.testing.assert_close(grad, ref_grad, atol=0.2, rtol=0.1)


@pytest.mark.parametrize("autocast", [None, torch.bfloat16, torch.float16])
def test_fused_and_manual_agree_under_autocast(autocast):
    fused, manual = twin_stacks({})
    x = torch.randn(2, 6, 16)
    mask = torch.tensor([[True] * 6, [False, False] + [True] * 4])
    out_f, grad_f = run(fused, x, mask, autocast)
    out_m, grad_m = run(manual, x, mask, autocast)
    out_a, grad_a = run(fused, x, mask, autocast, return_attn=True)  # manual via return_attn
    assert out_f.dtype == out_m.dtype == out_a.dtype
    tol = 1e-5 if autocast is None else 3e-2
    for out, grad in ((out_m, grad_m), (out_a, grad_a)):
        torch.testing.assert_close(out.float(), out_f.float(), atol=tol, rtol=tol)
        torch.testing.assert_close(grad, grad_f, atol=4 * tol, rtol=4 * tol)


@pytest.mark.parametrize(
    "flags", [{}, {"attn_talking_heads": True}, {"attn_sparse_topk": 3}], ids=str
)
def test_half_model_with_overflowing_scores_agrees_with_float64(flags):
    """A .half() stack whose q.k^T exceeds float16 range before the scale: every kernel path
    stays finite and matches the same weights in float64 (fused, attn_flash=False,
    return_attn). Queries and keys share one large projection and the positions one input,
    so q.k^T ~ 1.5e5 while the attended values barely differ."""
    fused, manual = twin_stacks(flags)
    with torch.no_grad():
        for stack in (fused, manual):
            for block in (m for m in stack.modules() if isinstance(m, Attention)):
                block.proj.to_k.weight.copy_(100 * block.proj.to_q.weight)
                block.proj.to_q.weight.copy_(block.proj.to_k.weight)
    x = torch.randn(1, 1, 16) + 1e-3 * torch.randn(2, 6, 16)
    expected = fused.double()(x.double())
    fused, manual = fused.half(), manual.half()
    runs = {
        "default": fused(x.half()),
        "attn_flash=False": manual(x.half()),
        "return_attn": fused(x.half(), return_attn=True),
    }
    for name, out in runs.items():
        assert torch.isfinite(out).all(), name
        torch.testing.assert_close(out.double(), expected, atol=0.05, rtol=0.05, msg=name)
