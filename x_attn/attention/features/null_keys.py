"""Keys that let a head attend to nothing.

``attn_add_zero_kv``: one key and value of zeros in front of every call's keys, whose logit is
therefore 0 ("attention is off by one", E. Miller, 2023; PyTorch's ``add_zero_attn``).
``attn_head_learned_sink``: the same null key with a learned logit per head instead of 0, the
attention sinks of gpt-oss (OpenAI, arXiv 2508.10925). Either way the softmax denominator
gains ``exp(logit)`` and the output gains nothing, so a head may put weight on "nothing" (see
Bondarenko et al., arXiv 2306.12929, on heads that need to do nothing).

The null key has no position and is always visible. Its logit enters as a bias column, so the
fused SDPA kernel still runs the layer; attention maps show it as the first column.

Shape legend: b batch, h query heads, hk key heads, hv value heads, i queries, j keys, d head
dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureSpec
from x_attn.masks.spec import AttnMask


class NullKey(nn.Module):
    """Extend-k/v stage: a zero key/value first, with logit 0 or a learned one per head."""

    def __init__(self, heads: int, learned: bool) -> None:
        super().__init__()
        self.sink = nn.Parameter(torch.zeros(heads)) if learned else None

    def forward(
        self, k: Tensor, v: Tensor, mask: AttnMask, bias: Tensor | None
    ) -> tuple[Tensor, Tensor, AttnMask, Tensor | None]:
        """k (b hk j d), v (b hv j d) -> (b hk 1+j d), (b hv 1+j d); bias (..., i, 1+j)."""
        k, v = F.pad(k, (0, 0, 1, 0)), F.pad(v, (0, 0, 1, 0))
        if bias is not None:
            bias = F.pad(bias, (1, 0), value=0.0)
        if self.sink is not None:
            first = torch.zeros(k.shape[-2], dtype=k.dtype, device=k.device)
            first[0] = 1.0
            sink = rearrange(self.sink.to(k.dtype), "h -> 1 h 1 1") * first  # (1, h, 1, 1+j)
            bias = sink if bias is None else bias + sink
        return k, v, mask.with_free(1), bias


def _spec(name: str, paper: str, learned: bool) -> FeatureSpec:
    return FeatureSpec(
        name,
        paper,
        "extend",
        enabled=lambda ctx: getattr(ctx.config, name),
        build=lambda ctx: NullKey(ctx.heads, learned),
        needs=("bias",) if learned else (),  # the learned sink logit enters as a bias column
    )


ZERO_KV_SPEC = _spec("add_zero_kv", "", learned=False)
HEAD_SINK_SPEC = _spec("head_learned_sink", "2508.10925", learned=True)
