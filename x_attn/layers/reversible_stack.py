"""Glue between a stack's layers and :class:`ReversibleSequence` (Reformer, arXiv 2001.04451).

Each self-attention layer and the feed-forward after it become one reversible block (f, g):
f = attention on the pre-normed stream, g = feed-forward on the pre-normed stream, each followed
by its layer's post-branch stage (scales, layerscale, sandwich norm). Positional
tables are passed as separate keyword tensors so that learned ones (the T5 bias) get gradients.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from x_attn.attention.attention import Attention
from x_attn.layers.block import StackLayer
from x_attn.layers.intermediates import LayerIntermediates
from x_attn.layers.reversible import ReversibleSequence
from x_attn.positional.context import PositionContext


class _AttentionBranch(nn.Module):
    """f(x) = post_branch(Attention(norm(x))) with the stack's masks and positional tables."""

    def __init__(self, layer: StackLayer) -> None:
        super().__init__()
        self.layer = layer

    def forward(
        self,
        x: Tensor,
        *,
        mask=None,
        attn_mask=None,
        rotary=None,
        bias=None,
        infused=None,
        values=None,
    ) -> Tensor:
        n = x.shape[1]
        positions = PositionContext(n, n, rotary=rotary, bias=bias, infused=infused, values=values)
        layer = self.layer
        out = layer.block(layer.normed(x), mask=mask, attn_mask=attn_mask, positions=positions)
        return layer.post_branch(out)


class _FeedForwardBranch(nn.Module):
    """g(x) = post_branch(FeedForward(norm(x)))."""

    def __init__(self, layer: StackLayer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return self.layer.post_branch(self.layer.block(self.layer.normed(x)))


def build_reversible(layers: nn.ModuleList, types: tuple[str, ...]) -> ReversibleSequence:
    """Pairs ('a', 'f') layers into reversible blocks (validation guarantees the pattern)."""
    if len(types) % 2 or any(types[i : i + 2] != ("a", "f") for i in range(0, len(types), 2)):
        raise AssertionError(f"reversible stack needs alternating a/f layers, got {types}")
    blocks = [
        (_AttentionBranch(layers[i]), _FeedForwardBranch(layers[i + 1]))
        for i in range(0, len(types), 2)
    ]
    return ReversibleSequence(blocks)


def run_reversible(
    seq: ReversibleSequence, x: Tensor, key_mask, attn_mask, positions: PositionContext
) -> Tensor:
    """Run the reversible sequence with the stack's per-forward inputs."""
    return seq(
        x,
        mask=key_mask,
        attn_mask=attn_mask,
        rotary=positions.rotary,
        bias=positions.bias,
        infused=positions.infused,
        values=positions.values,
    )


def run_reversible_stack(
    stack: Any, x: Tensor, key_mask, attn_mask, positions: PositionContext
) -> tuple[Tensor, LayerIntermediates]:
    """The reversible two-stream stack (Reformer) of ``stack`` on x (b, n, d), then its final
    stage, with the intermediates (the kernel each attention layer ran)."""
    # not a submodule, so .train()/.eval() never reach it: follow the stack's mode
    stack.reversible.training = stack.training
    out = run_reversible(stack.reversible, x, key_mask, attn_mask, positions)
    # each reversible branch runs its layer's default kernel (no return_attn here)
    blocks = [layer.block for layer in stack.layers if isinstance(layer.block, Attention)]
    kernels = [blk.kernel.name for blk in blocks]
    return stack._final(out, None, None), LayerIntermediates(kernels=kernels)
