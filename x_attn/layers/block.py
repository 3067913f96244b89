"""One layer of a stack: its norm, its block (attention or feed-forward) and its residual rule.

Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

from torch import Tensor, nn

from x_attn.attention.attention import Attention
from x_attn.config import LayersConfig
from x_attn.layers.feedforward import FeedForward
from x_attn.layers.norms import make_norm
from x_attn.layers.residual import make_residual


class StackLayer(nn.Module):
    """A block between its norm and its residual rule.

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

    def __getitem__(self, name: str) -> nn.Module:
        return getattr(self, name)

    def normed(self, x: Tensor) -> Tensor:
        """The block's input: ``norm(x)`` under pre-norm, else ``x``."""
        return self.norm(x) if self.pre_norm else x

    def merge(self, out: Tensor, residual: Tensor) -> Tensor:
        """The stream after the block: residual rule, then the post-norm if any."""
        x = self.residual(out, residual)
        return x if self.pre_norm else self.norm(x)


def build_layer(cfg: LayersConfig, kind: str, scale: float) -> StackLayer:
    """The layer of type ``kind`` of a stack configured by ``cfg`` (macaron ``scale``)."""
    if kind == "a":
        block: nn.Module = Attention(
            cfg.dim, cfg.heads, causal=cfg.causal, config=cfg.attn, residual_attn=cfg.residual_attn
        )
    elif kind == "c":
        block = Attention(
            cfg.dim,
            cfg.heads,
            config=cfg.cross_attn,
            flag_prefix="cross_attn_",
            residual_attn=cfg.cross_residual_attn,
        )
    else:
        block = FeedForward(cfg.dim, cfg.ff)
    norm = nn.Identity() if cfg.use_rezero else make_norm(cfg.norm, cfg.dim)
    residual = make_residual(cfg.dim, rezero=cfg.use_rezero, gated=cfg.gate_residual, scale=scale)
    return StackLayer(kind, norm, block, residual, cfg.pre_norm)
