"""Mixed precision over the whole flag registry, on CPU.

- bf16 autocast: a train step's forward and backward are finite, the logits come out in
  bfloat16 (the logits head is a Linear, which autocast runs in bfloat16);
- bfloat16 / float16 weights: a forward is finite and in the weights' dtype;
- in every one of those runs, the statistics stay in float32: no softmax, log-softmax,
  logsumexp, layer norm, vector norm or rsqrt takes a half-precision input, and rotary /
  sinusoid angles (the inputs of sin and cos) are float32 or wider. Fused kernels (SDPA)
  accumulate in float32 inside; the ops watched here are the ones x_attn calls itself.
"""

from __future__ import annotations

import pytest
import torch
from flag_models import build, tokens
from torch.utils._python_dispatch import TorchDispatchMode

from x_attn.registry import FLAGS, FlagCase

HALF = (torch.float16, torch.bfloat16)
STATISTICS = {"_softmax", "_log_softmax", "logsumexp", "native_layer_norm", "rsqrt"}
STATISTICS |= {"linalg_vector_norm", "norm", "var_mean", "native_group_norm", "sin", "cos"}


class HalfStatistics(TorchDispatchMode):
    """Records the watched ops that receive a float16 / bfloat16 tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.found: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name in STATISTICS and isinstance(args[0], torch.Tensor) and args[0].dtype in HALF:
            self.found.add(name)
        return func(*args, **(kwargs or {}))


def _model(case: FlagCase) -> torch.nn.Module:
    return build(case, max_seq_len=16, depth=1) if _shallow(case) else build(case, max_seq_len=16)


def _shallow(case: FlagCase) -> bool:
    try:
        build(case, max_seq_len=16, depth=1)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("case", FLAGS, ids=lambda c: c.name)
def test_registry_under_bf16_autocast_and_half_weights(case: FlagCase) -> None:
    ids = tokens(2, 8)
    net = _model(case).float().train()
    with HalfStatistics() as watch, torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(ids)
    assert logits.dtype == torch.bfloat16
    logits.float().square().mean().backward()
    assert torch.isfinite(logits).all()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert not watch.found, f"autocast: {sorted(watch.found)} ran in half precision"
    for dtype in HALF:
        net = _model(case).to(dtype).eval()
        with HalfStatistics() as watch, torch.no_grad():
            out = net(ids)
        assert out.dtype == dtype and torch.isfinite(out).all(), dtype
        assert not watch.found, f"{dtype} weights: {sorted(watch.found)} in half precision"


def test_half_statistics_watch_sees_a_half_softmax() -> None:
    """The watch itself: a softmax of a bfloat16 tensor is reported, a float32 one is not."""
    with HalfStatistics() as watch:
        torch.randn(3, dtype=torch.bfloat16).float().softmax(-1)
    assert not watch.found
    with HalfStatistics() as watch:
        torch.randn(3, dtype=torch.bfloat16).softmax(-1)
    assert watch.found == {"_softmax"}


def test_bf16_rotary_and_layernorm_match_float32_maths() -> None:
    """A bfloat16 model's rotary rotation and LayerNorm equal the float32 maths on the same
    bfloat16 values, to bfloat16 rounding of the result (a bfloat16 angle at position 200
    would be off by up to 0.5 rad)."""
    from x_attn.layers.norms import LayerNorm
    from x_attn.positional.rotary import RotaryEmbedding

    rotary = RotaryEmbedding(8)
    positions = torch.arange(190, 206)
    table = rotary.table(positions)
    t = torch.randn(1, 1, 16, 8).bfloat16()
    got = table.rotate(t)
    want = rotary.table(positions, dtype=torch.float64).rotate(t.double())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), want, atol=2e-2, rtol=1e-2)
    norm = LayerNorm(64)
    x = (torch.randn(4, 64) * 300 + 1000).bfloat16()  # large mean: low-precision stats fail
    want = torch.nn.functional.layer_norm(x.double(), (64,), eps=1e-5)
    torch.testing.assert_close(norm.bfloat16()(x).double(), want, atol=2e-2, rtol=1e-2)
