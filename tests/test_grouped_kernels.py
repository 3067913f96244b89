"""Grouped key/value heads in the kernels: exact against the float64 reference, and no key or
value copied per query head (on every SDPA path: fused ``enable_gqa`` and the folded one).

Shape legend: b batch, h query heads, hk key/value heads, i queries, j keys, dh / dv head dims.
"""

from __future__ import annotations

import pytest
import torch
from reference import reference_attention
from torch.profiler import ProfilerActivity, profile

from x_attn.kernels.inputs import AttnInputs
from x_attn.kernels.manual import manual_attention
from x_attn.kernels.sdpa import sdpa_attention

B, H, I, J, DH = 2, 6, 3, 7, 8
KERNELS = {"sdpa": sdpa_attention, "manual": lambda inputs: manual_attention(inputs)[0]}
# (kv heads, value dim, bias): the SDPA path each one takes on CPU
CASES = {
    "gqa-fused": (3, DH, False),  # equal dims, no bias: enable_gqa on the fused kernel
    "mqa-fused": (1, DH, False),
    "gqa-value-dim": (2, 5, False),  # value dim differs: folded into the query axis
    "gqa-bias-grad": (3, DH, True),  # a bias that needs a gradient: folded
    "mqa-value-dim": (1, 12, True),
}


def _inputs(kv_heads: int, dv: int, with_bias: bool, causal: bool, grad: bool = False):
    g = torch.Generator().manual_seed(kv_heads * 10 + dv)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(grad)

    q, k, v = rand(B, H, I, DH), rand(B, kv_heads, J, DH), rand(B, kv_heads, J, dv)
    mask = torch.ones(B, 1, 1, J, dtype=torch.bool)
    mask[0, ..., 1] = False
    mask[1, ..., -1] = False  # the last key of sample 1: its first query sees nothing else...
    mask[1, ..., :3] = False  # ...once the causal rule hides keys 4 and 5 as well
    bias = rand(H, I, J) if with_bias else None
    return q, k, v, mask, bias


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", CASES)
def test_grouped_heads_equal_the_reference(case: str, kernel: str, causal: bool) -> None:
    kv_heads, dv, with_bias = CASES[case]
    q, k, v, mask, bias = _inputs(kv_heads, dv, with_bias, causal)
    inputs = AttnInputs(q, k, v, mask=mask, bias=bias, causal=causal, scale=0.3)
    expected = reference_attention(q, k, v, mask=mask, bias=bias, causal=causal, scale=0.3)
    torch.testing.assert_close(KERNELS[kernel](inputs), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_grouped_heads_sdpa_gradients_equal_manual(case: str) -> None:
    kv_heads, dv, with_bias = CASES[case]
    grads = []
    for kernel in KERNELS.values():
        q, k, v, mask, bias = _inputs(kv_heads, dv, with_bias, causal=True, grad=True)
        out = kernel(AttnInputs(q, k, v, mask=mask, bias=bias, causal=True, scale=0.3))
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append([t.grad for t in (q, k, v, bias) if t is not None])
    for fused, manual in zip(*grads):
        torch.testing.assert_close(fused, manual, atol=1e-10, rtol=0)


def test_square_causal_grouped_uses_the_fast_path() -> None:
    """Prefill (i == j, causal only): SDPA's own causal flag, grouped heads unexpanded."""
    q = torch.randn(B, H, J, DH, dtype=torch.float64)
    k, v = torch.randn(2, B, 2, J, DH, dtype=torch.float64)
    inputs = AttnInputs(q, k, v, causal=True, scale=DH**-0.5)
    expected = reference_attention(q, k, v, causal=True)
    torch.testing.assert_close(sdpa_attention(inputs), expected, atol=1e-12, rtol=0)


def _ops(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", CASES)
def test_grouped_heads_copy_no_key_or_value(case: str, kernel: str) -> None:
    """No repeat of k/v per query head, on every path (SDPA's math fallback would repeat)."""
    kv_heads, dv, with_bias = CASES[case]
    q, k, v, mask, bias = _inputs(kv_heads, dv, with_bias, causal=False, grad=with_bias)
    inputs = AttnInputs(q, k, v, mask=mask, bias=bias, scale=0.3)
    ops = _ops(lambda: KERNELS[kernel](inputs))
    assert not {"aten::repeat_interleave", "aten::repeat"} & ops, sorted(ops)
