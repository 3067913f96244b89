"""Persistent memory key/values: "Augmenting Self-attention with Persistent Memory"
(Sukhbaatar et al., arXiv 1907.01470).

Learned key/value vectors are prepended to every attention call's keys and values. They have
no position: the positional bias is zero for them and no mask hides them. The layer's key
transforms for keys without a position (QK-norm) act on the memory keys too.

Shape legend: b batch, h heads, hk key heads, m memory slots, j keys, dh head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import repeat
from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureContext, FeatureSpec
from x_attn.attention.features.stages import HeadTransform
from x_attn.masks.spec import AttnMask


class MemoryKeyValues(nn.Module):
    """Prepends ``num`` learned keys and values (per key head) to k and v."""

    def __init__(
        self,
        num: int,
        k_heads: int,
        qk_dim: int,
        v_heads: int,
        v_dim: int,
        key_transforms: tuple[HeadTransform, ...] = (),
    ) -> None:
        super().__init__()
        self.num = num
        self.key_transforms = tuple(key_transforms)  # the layer's, registered there
        self.mem_k = nn.Parameter(torch.randn(k_heads, num, qk_dim))
        self.mem_v = nn.Parameter(torch.randn(v_heads, num, v_dim))

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """k (b hk j dh), v (b h j dh) -> with m memory slots first: (b hk m+j dh), (b h m+j dh)."""
        b = k.shape[0]
        mem_k = repeat(self.mem_k, "hk m d -> b hk m d", b=b).to(k.dtype)
        for transform in self.key_transforms:
            mem_k = transform.free_k(mem_k)
        mem_v = repeat(self.mem_v, "h m d -> b h m d", b=b).to(v.dtype)
        return torch.cat((mem_k, k), dim=-2), torch.cat((mem_v, v), dim=-2)

    def forward(
        self, k: Tensor, v: Tensor, mask: AttnMask, bias: Tensor | None
    ) -> tuple[Tensor, Tensor, AttnMask, Tensor | None]:
        """Extend-k/v stage: memory slots in front of k, v, the mask (always visible, no
        position) and the bias."""
        k, v = self.extend(k, v)
        return k, v, mask.with_free(self.num), self.pad_bias(bias)

    def pad_bias(self, bias: Tensor | None) -> Tensor | None:
        """Key axis (last) gets ``num`` zero-bias columns in front."""
        return None if bias is None else F.pad(bias, (self.num, 0), value=0.0)


def _build(ctx: FeatureContext) -> MemoryKeyValues:
    proj = ctx.projection
    return MemoryKeyValues(
        ctx.config.num_mem_kv,
        proj.k_heads,
        proj.qk_dim,
        proj.v_heads,
        proj.v_dim,
        proj.head_transforms,
    )


MEMORY_KV_SPEC = FeatureSpec(
    "num_mem_kv",
    "1907.01470",
    "extend",
    enabled=lambda ctx: ctx.config.num_mem_kv > 0,
    build=_build,
    attr="memory_kv",
)
