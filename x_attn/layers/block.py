"""One layer of a stack: its norms, its block (attention or feed-forward) and its residual rule.

With ``x`` the residual stream, ``c`` an optional condition (adaptive norms), one layer computes
(x-transformers' order)::

    h   = norm(x, c)                  pre-norm (identity when pre_norm=False)
    h   = shift(h)                    shift_tokens (done by the layer loop, which holds the cache)
    out = block(h)
    out = layerscale(s_b * out, c)    s_b: scale_residual=<float> (and macaron's 0.5 under a
                                      sandwich norm); layerscale / adaptive layerscale
    out = branch_norm(out, c)         sandwich_norm
    x   = rule(out, x * g * k)        residual rule; g: learned (init 1) when scale_residual is
                                      True or a float; k: scale_residual_constant
    x   = norm(x, c)                  post-norm (pre_norm=False), or post_norm (pre_and_post_norm)

Sandwich norm: Ding et al., "CogView", arXiv 2105.13290. Pre- and post-norm: Xiong et al.,
"On Layer Normalization in the Transformer Architecture", arXiv 2002.04745.
Shape legend: b batch, n sequence, d model dim, dc condition dim.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from x_attn.layers.conditioning import apply_norm
from x_attn.layers.shift import ShiftTokens


class StackLayer(nn.Module):
    """A block between its norms and its residual rule (see the module docstring).

    ``layer["norm"]`` / ``layer["block"]`` / ``layer["residual"]`` also work (the mapping
    access of the former ModuleDict layout; the state_dict keys are the same).

    Args:
        kind: ``'a'`` self-attention, ``'c'`` cross-attention, ``'f'`` feed-forward.
        norm: the pre-norm (pre_norm=True) or the post-norm (pre_norm=False).
        block: the Attention or FeedForward module.
        residual: the rule merging the block's output into the stream.
        pre_norm: where ``norm`` sits.
    """

    def __init__(
        self, kind: str, norm: nn.Module, block: nn.Module, residual: nn.Module, pre_norm: bool
    ) -> None:
        super().__init__()
        self.kind, self.pre_norm = kind, pre_norm
        self.norm, self.block, self.residual = norm, block, residual
        self.branch_norm: nn.Module | None = None
        self.post_norm: nn.Module | None = None
        self.layerscale: nn.Module | None = None
        self.shift: ShiftTokens | None = None
        self.residual_scale: nn.Parameter | None = None
        self.branch_scale, self.residual_constant, self.dropout = 1.0, 1.0, 0.0
        self.checkpointed = False  # checkpoint_layers: recompute the block in backward

    def __getitem__(self, name: str) -> nn.Module:
        return getattr(self, name)

    def normed(self, x: Tensor, condition: Tensor | None = None) -> Tensor:
        """The block's input: ``norm(x)`` under pre-norm, else ``x``."""
        return apply_norm(self.norm, x, condition) if self.pre_norm else x

    def run_block(self, h: Tensor, *args: Any, **kwargs: Any) -> Any:
        """``block(h, ...)``; under ``checkpoint_layers`` (Chen et al., "Training Deep Nets with
        Sublinear Memory Cost", arXiv 1604.06174), in training with gradients on, its
        activations are not kept but recomputed in backward (``torch.utils.checkpoint``,
        non-reentrant; dropout replays the same random numbers)."""
        if not (self.checkpointed and self.training and torch.is_grad_enabled()):
            return self.block(h, *args, **kwargs)
        if kwargs.get("cache") is not None:
            raise ValueError(
                "checkpoint_layers recomputes a layer in backward, which would update its KV "
                "cache twice; decode under torch.no_grad() or model.eval()"
            )
        return checkpoint(self.block, h, *args, use_reentrant=False, **kwargs)

    def post_branch(self, out: Tensor, condition: Tensor | None = None) -> Tensor:
        """The block's output as it joins the stream (scales, layerscale, sandwich norm)."""
        if self.branch_scale != 1.0:
            out = out * self.branch_scale
        if self.layerscale is not None:
            out = apply_norm(self.layerscale, out, condition)
        if self.branch_norm is not None:
            out = apply_norm(self.branch_norm, out, condition)
        return out

    def merge(
        self,
        out: Tensor,
        residual: Tensor,
        condition: Tensor | None = None,
        sequence: tuple[Tensor | None, bool] = (None, False),
    ) -> Tensor:
        """The stream after the block: residual rule, then the post-norm if any.

        ``sequence``: the padding mask (b, n) and causality of the call, for a rule that
        takes token means (``reads_sequence``, mv_split_residual)."""
        if self.residual_scale is not None:
            residual = residual * self.residual_scale
        if self.residual_constant != 1.0:
            residual = residual * self.residual_constant
        if getattr(type(self.residual), "reads_sequence", False):  # a class attribute
            x = self.residual(out, residual, *sequence)
        else:
            x = self.residual(out, residual)
        if not self.pre_norm:
            x = apply_norm(self.norm, x, condition)
        if self.post_norm is not None:
            x = apply_norm(self.post_norm, x, condition)
        return x
