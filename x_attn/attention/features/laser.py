"""LASER: attention with exponential transformation of the values (Duvvuri and Dhillon,
arXiv 2411.03493).

Attention averages exp(V) and takes the log: ``o = log(softmax(q k^T) exp(V))``, a log-sum-exp
of the values weighted by the attention probabilities, whose gradient does not vanish with the
softmax's. As in x-transformers (``attn_laser``, ``attn_laser_softclamp_value`` c = 15), the
values are first soft-capped, ``c tanh(v / c)``, so ``exp`` stays in range. x_attn stores
``exp(softclamp(v) - c)``, in ``(e^-2c, 1]`` (no overflow in any dtype, exp(c) overflows
float16), and adds c back after the log: ``o = log(A exp(s - c)) + c``, the same function. A
query row with nothing to attend to stays zero.

The exp values span 2c = 30 nats, more than float16 holds (normal numbers span ~21 nats, with
subnormals ~28): stored in float16, values below about -1.6 would underflow to 0 and the log be
wrong by up to 4. So for float16 / bfloat16 values the exp values, the attention over them and
the log are kept in float32 (as softmax statistics are elsewhere); the layer promotes the
queries and keys of such a call to the values' dtype, and the log is cast back to the input's
dtype; autocast is off for that kernel call, which would narrow them again. A KV cache then
holds the exp values in float32. Since the weights sum to 1, the output is at least ``e^-2c``:
float32 holds that while 2c <= 87.3 nats (c <= 43.6), float64 up to c = 354. A larger c in
the dtype the exp values take would underflow the smallest exp values to 0 and bias the output
(a row of them would come out 0 instead of -c), so such a call is refused, naming the flag.

The values stage exponentiates the new value rows before the cache (so the cache holds exp
values), and call-time additional values the same way (``free_values``); the heads stage takes
the log of each head's output. Weights must be a convex
combination: memory key/values (raw learned values), signed (Cog) weights and post-softmax
talking heads would put non-positive numbers under the log, and are refused.

Shape legend: b batch, h heads, n rows, d value head dim.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from x_attn.attention.features.spec import FeatureContext, FeatureSpec
from x_attn.attention.features.stages import OutputGate, ValueTransform
from x_attn.layers.activations import softclamp
from x_attn.utils import compute_dtype

# options whose attention weights or values are not a convex combination of exp values
CLASHES = ("num_mem_kv", "cog_signed", "talking_heads", "post_talking_heads")


class LaserValues(ValueTransform):
    """v (b h n d) -> exp(c tanh(v / c) - c), in float32 for float16 / bfloat16 values; also
    applied to call-time additional values (every value is averaged as exp)."""

    free_values = True

    def __init__(self, clamp: float, flag: str = "attn_laser_softclamp_value") -> None:
        super().__init__()
        self.clamp, self.flag = clamp, flag

    def forward(self, v: Tensor, rows: Tensor | None, residual: Tensor | None) -> Tensor:
        wide = v.to(compute_dtype(v.dtype))
        span = -math.log(torch.finfo(wide.dtype).tiny)  # nats of normal numbers below 1
        if 2 * self.clamp > span:
            raise ValueError(
                f"{self.flag}={self.clamp:g}: the exp values span 2c = {2 * self.clamp:g} "
                f"nats, but {wide.dtype} holds {span:.1f}, so the smallest would underflow to 0 "
                f"and bias the output; use a value <= {math.floor(span * 5) / 10} or run the "
                "layer in float64"
            )
        return (softclamp(wide, self.clamp) - self.clamp).exp()


class LaserLog(OutputGate):
    """out (b h n d) -> log(out) + c in the query input's dtype; an all-zero output (a row
    with no key) stays 0."""

    def __init__(self, clamp: float) -> None:
        super().__init__()
        self.clamp = clamp

    def forward(self, out: Tensor, x: Tensor) -> Tensor:
        live = out > 0
        tiny = torch.finfo(out.dtype).tiny
        logs = torch.where(live, out.clamp(min=tiny).log() + self.clamp, 0.0)
        return logs.to(x.dtype)


def _enabled(ctx: FeatureContext) -> bool:
    on = ctx.config.laser
    clashes = [ctx.flag(name) for name in CLASHES if getattr(ctx.config, name)]
    if on and clashes:
        raise ValueError(
            f"{ctx.flag('laser')} takes the log of the attended exp-values, which needs "
            f"positive weights over exp-values; {', '.join(clashes)} break that; drop one"
        )
    if on and not ctx.config.laser_softclamp_value > 0:
        raise ValueError(
            f"{ctx.flag('laser_softclamp_value')} must be > 0, got "
            f"{ctx.config.laser_softclamp_value!r}"
        )
    return on


LASER_VALUES_SPEC = FeatureSpec(
    "laser",
    "2411.03493",
    "values",
    enabled=_enabled,
    build=lambda ctx: LaserValues(
        float(ctx.config.laser_softclamp_value), ctx.flag("laser_softclamp_value")
    ),
    attr="laser_values",
)
LASER_LOG_SPEC = FeatureSpec(
    "laser_log",
    "2411.03493",
    "heads",
    enabled=lambda ctx: ctx.config.laser,
    build=lambda ctx: LaserLog(float(ctx.config.laser_softclamp_value)),
    flag_of=lambda ctx: ctx.flag("laser"),
)
