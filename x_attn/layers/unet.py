"""Long skip connections between mirrored blocks (U-ViT: Bao et al., "All are Worth Words: A
ViT Backbone for Diffusion Models", arXiv 2209.12152), x-transformers' ``unet_skips``.

A stack of B default blocks (``'a', 'f'``, or ``'a', 'c', 'f'``) pairs block ``B - 1 - k``
with block ``k`` for ``k < B // 2``: at the start of block ``B - 1 - k`` the residual stream
``x`` becomes ``W [x_k ; x]``, with ``x_k`` the stream at the start of block ``k`` and ``W``
a learned (2d -> d) linear map without bias. With an odd B the middle block has no partner.
Skips act per position, so causality, the KV cache and memories are unaffected.

Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from x_attn.layers.plan import LayerPlan


class UNetSkips(nn.Module):
    """The combining maps of a stack, keyed by the module index of the block start they act at."""

    def __init__(self, dim: int, plan: LayerPlan, owner: str, streams: dict[str, bool]) -> None:
        super().__init__()
        _check(plan, owner)
        for flag in (name for name, on in streams.items() if on):
            raise ValueError(
                f"{owner}: unet_skips rewrites the residual stream between blocks, which "
                f"{flag} carries in another form; drop one of them"
            )
        blocks, size = len(plan.types) // plan.block_len, plan.block_len
        # module index of a target block's start -> module index of its source block's start
        self.sources = {(blocks - 1 - k) * size: k * size for k in range(blocks // 2)}
        self.saved_at = frozenset(self.sources.values())
        self.combines = nn.ModuleDict(
            {str(t): nn.Linear(2 * dim, dim, bias=False) for t in self.sources}
        )

    def at(self, index: int, x: Tensor, saved: dict[int, Tensor]) -> Tensor:
        """The stream (b, n, d) entering module ``index``; keeps the sources in ``saved``."""
        if index in self.saved_at:
            saved[index] = x
        source = self.sources.get(index)
        if source is None:
            return x
        return self.combines[str(index)](torch.cat((saved[source], x), dim=-1))


def _check(plan: LayerPlan, owner: str) -> None:
    """Mirrored blocks need at least two default blocks, run once each in order."""
    if plan.order != tuple(range(len(plan.types))):
        raise ValueError(
            f"{owner}: unet_skips pairs blocks by their place in the stack, which "
            "layers_execute_order / weight_tie_layers change; drop one of them"
        )
    if plan.block_len == 1 and len(plan.types) > 1:
        raise ValueError(
            f"{owner}: unet_skips pairs default blocks, but this stack's layers come from "
            "custom_layers / sandwich_coef; drop one of them"
        )
    if len(plan.types) // plan.block_len < 2:
        raise ValueError(f"{owner}: unet_skips needs depth >= 2 (two blocks to pair)")
