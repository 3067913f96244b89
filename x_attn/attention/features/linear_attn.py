"""Linear attention: "Transformers are RNNs" (Katharopoulos et al., arXiv 2006.16236).

softmax(q . k) is replaced by the kernel phi(q) . phi(k) with phi(x) = elu(x) + 1 (positive),
so attention becomes sums over the keys: O(n) time, and a decoding state of fixed size.
The feature map wraps the layer's projection (:mod:`x_attn.attention.projections.feature_map`);
the computation is the linear kernel (:mod:`x_attn.kernels.linear`: non-causal sums, causal
chunkwise-parallel prefix sums); decoding keeps (S, z) in a
:class:`x_attn.cache.state.StateEntry`. As in the paper there is no 1/sqrt(d) scale.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch.nn.functional as F
from torch import Tensor

from x_attn.attention.features.spec import FeatureContext, FeatureSpec
from x_attn.attention.projections.base import Projection
from x_attn.attention.projections.feature_map import FeatureMap, FeatureMapProjection
from x_attn.cache.state import StateEntry


class EluFeatureMap(FeatureMap):
    """phi(x) = elu(x) + 1, elementwise (x + 1 for x > 0, exp(x) otherwise)."""

    def forward(self, x: Tensor, is_query: bool) -> Tensor:
        return F.elu(x) + 1.0


def wrap_with(
    ctx: FeatureContext, flag: str, make: Callable[[FeatureContext, Projection], FeatureMap]
) -> Callable[[Projection], Projection]:
    """The projection wrapper of a feature-map attention (``make(ctx, inner)`` builds the map
    for the wrapped projection); refuses attention dropout and memory key/values."""
    if ctx.config.dropout > 0:
        raise ValueError(
            f"Attention: {ctx.flag('dropout')}={ctx.config.dropout} drops attention weights, "
            f"which {ctx.flag(flag)} never forms (it sums over keys); drop {ctx.flag('dropout')}"
        )
    if ctx.config.num_mem_kv:
        raise ValueError(
            f"Attention: {ctx.flag('num_mem_kv')} adds learned keys after the projection, so "
            f"they would skip {ctx.flag(flag)}'s feature map (and need not be positive); drop "
            f"one of {ctx.flag('num_mem_kv')}, {ctx.flag(flag)}"
        )
    return lambda inner: FeatureMapProjection(inner, make(ctx, inner))


def state_entry(ctx: FeatureContext) -> Callable[[], StateEntry]:
    """Running-state entries that scan ``linear_attn_chunk`` positions per block."""
    return partial(StateEntry, chunk=ctx.config.linear_attn_chunk)


LINEAR_ATTN_SPEC = FeatureSpec(
    "linear_attn",
    "2006.16236",
    "project",
    enabled=lambda ctx: ctx.config.linear_attn,
    slot="feature_map",
    wrap_projection=lambda ctx: wrap_with(ctx, "linear_attn", lambda *_: EluFeatureMap()),
    cache_entry=state_entry,
    needs=("cache:state",),
)
