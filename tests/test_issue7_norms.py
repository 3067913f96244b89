"""Issue 7 item 5: the normalisation layers in float16 / bfloat16.

Each norm is compared with its paper formula evaluated in float64 on inputs where half
precision breaks a naive implementation: a zero vector (eps underflows in float16), entries
beyond 256 (their square overflows float16) and tiny entries (their square underflows).

Shape legend: b batch, d model dim.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from x_attn import AutoregressiveWrapper, Decoder, TransformerWrapper
from x_attn.layers.norms import make_norm

D = 16
HALF = [torch.float16, torch.bfloat16]
KINDS = ["layernorm", "rmsnorm", "scalenorm"]


def reference(kind: str, x: Tensor, eps: float) -> Tensor:
    """The paper formula in float64 with unit gain (LayerNorm: no affine part)."""
    x = x.double()
    if kind == "rmsnorm":  # arXiv 1910.07467
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    if kind == "scalenorm":  # arXiv 1910.05895, gain initialised to sqrt(d)
        return math.sqrt(D) * x / x.norm(dim=-1, keepdim=True).clamp(min=eps)
    centred = x - x.mean(-1, keepdim=True)
    return centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + eps)


def cases() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    signs = torch.where(torch.rand(2, D, generator=g) > 0.5, 1.0, -1.0)
    return {
        "zero": torch.zeros(2, D),
        "large": signs * (300 + 200 * torch.rand(2, D, generator=g)),  # x^2 > float16 max
        "tiny": signs * 1e-3 * (1 + torch.rand(2, D, generator=g)),  # x^2 ~ 1e-6
        "normal": torch.randn(2, D, generator=g),
    }


def close(got: Tensor, expected: Tensor, dtype: torch.dtype) -> None:
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    atol = tol * float(expected.abs().max()) + 1e-3
    torch.testing.assert_close(got.double(), expected, atol=atol, rtol=tol)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(cases()))
def test_half_precision_norm_matches_float64_formula(kind, dtype, case):
    norm = make_norm(kind, D).to(dtype)
    x = cases()[case].to(dtype).requires_grad_()
    out = norm(x)
    assert out.dtype == dtype
    x64 = x.detach().double().requires_grad_()
    expected = reference(kind, x64, norm.eps)
    close(out, expected.detach(), dtype)
    weights = torch.linspace(-1, 1, D)
    (out.float() * weights).sum().backward()
    (expected * weights.double()).sum().backward()
    # the true gradient where the dtype can hold it (ScaleNorm's at 0 is g / eps = 4e5)
    representable = x64.grad.abs() < torch.finfo(dtype).max / 2
    assert torch.isfinite(x.grad[representable]).all()
    close(x.grad[representable], x64.grad[representable], dtype)
    assert all(torch.isfinite(p.grad).all() for p in norm.parameters())


@pytest.mark.parametrize("norm", ["use_rmsnorm", "use_scalenorm", "use_layernorm"])
def test_half_model_gets_finite_gradients_at_first_step(norm):
    torch.manual_seed(0)
    net = TransformerWrapper(
        num_tokens=256,
        max_seq_len=64,
        attn_layers=Decoder(dim=64, depth=2, heads=4, **{norm: True}),
    )
    model = AutoregressiveWrapper(net).half()
    loss = model(torch.randint(0, 256, (2, 33)))
    loss.backward()
    assert torch.isfinite(loss)
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert bad == []
