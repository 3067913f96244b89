"""Position-wise feed-forward block, with optional gated linear units.

Plain: ``proj_out(dropout(act(proj_in(x))))`` (Vaswani et al., arXiv 1706.03762).
GLU variants: Shazeer, "GLU Variants Improve Transformer", arXiv 2002.05202. ``proj_in``
produces twice the inner width, split into ``(value, gate)``; the hidden state is
``value * act(gate)``: GEGLU with GELU, SwiGLU with SiLU (``swish=True``).

Options (x-transformers spelling, see :mod:`x_attn.layers.activations`): ``relu_squared``,
``solu``, ``custom_activation``; ``softclamp_value`` clamps the plain hidden layer before the
activation; ``glu_mult_bias`` multiplies the GLU output by a learned vector (init ones);
``glu_softclamp`` clamps the GLU's linear factor and gate; ``post_act_ln`` puts a LayerNorm
over the hidden features after the activation (NormFormer, Shleifer et al., arXiv 2110.09456);
``sublayer_dropout`` drops the block's output; ``zero_init_output`` starts ``proj_out`` at zero.

Shape legend: b batch, n sequence, d model dim, e inner dim (``int(d * mult)``).
"""

from __future__ import annotations

import difflib
from dataclasses import fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from x_attn.config import FeedForwardConfig
from x_attn.layers.activations import make_activation, softclamp
from x_attn.layers.norms import LayerNorm
from x_attn.utils import check_positive_int, default, dropout_if_active, exists

# up to this many rows (batch x positions) the GLU input runs as one (d -> 2e) matmul
_FEW_ROWS = 8
_OWNER = "FeedForward"


def _config_from_kwargs(kwargs: dict[str, Any]) -> FeedForwardConfig:
    """Build a FeedForwardConfig from x-transformers style kwargs (mult, glu, ...)."""
    known = [f.name for f in fields(FeedForwardConfig) if f.init]
    for name in kwargs:
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TypeError(
            f"unknown argument {name!r} for {_OWNER}{hint} Known arguments: {', '.join(known)}"
        )
    return FeedForwardConfig(**kwargs)


def _resolve_config(config: FeedForwardConfig | None, kwargs: dict[str, Any]) -> FeedForwardConfig:
    if exists(config) and kwargs:
        raise TypeError(
            f"{_OWNER}: pass either 'config' or keyword options ({', '.join(kwargs)}), not both; "
            "put the options into the FeedForwardConfig"
        )
    if exists(config) and not isinstance(config, FeedForwardConfig):
        raise TypeError(
            f"{_OWNER}: 'config' must be a FeedForwardConfig, got {type(config).__name__}"
        )
    given = exists(config)  # a config object was checked (and warned about) where it was made
    config = config if given else _config_from_kwargs(kwargs)
    config.validate(_OWNER, warn=not given)
    return config


class FeedForward(nn.Module):
    """Two linear maps around a GELU/SiLU (optionally gated) activation.

    Args:
        dim: input width ``d``.
        config: the options; alternatively give them as keyword arguments with the
            x-transformers spelling: ``mult=4, glu=False, swish=False, no_bias=False, dropout=0.``
        dim_out: output width (default ``dim``).

    Raises:
        TypeError: unknown keyword (with a suggestion), or both ``config`` and keywords.
        ValueError: invalid option values.
    """

    def __init__(
        self,
        dim: int,
        config: FeedForwardConfig | None = None,
        dim_out: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        config = _resolve_config(config, kwargs)
        check_positive_int("dim", dim, _OWNER)
        dim_out = default(dim_out, dim)
        check_positive_int("dim_out", dim_out, _OWNER)
        inner = int(dim * config.mult)
        if inner < 1:
            raise ValueError(
                f"{_OWNER}: inner width int(dim * mult) = int({dim} * {config.mult}) is 0; "
                "raise 'mult' (ff_mult)"
            )
        bias = not config.no_bias
        self.config = config
        self.glu = config.glu
        self.proj_in = nn.Linear(dim, inner * 2 if config.glu else inner, bias=bias)
        self.act = make_activation(config, inner)
        if config.glu_mult_bias and config.glu:
            self.mult_bias = nn.Parameter(torch.ones(inner))
        self.post_act_norm = LayerNorm(inner) if config.post_act_ln else None
        self.dropout = nn.Dropout(config.dropout)
        self.proj_out = nn.Linear(inner, dim_out, bias=bias)
        self.sublayer_dropout = nn.Dropout(config.sublayer_dropout)
        if config.zero_init_output:
            zero_init_(self.proj_out)

    def muon_parameters(self) -> list[nn.Parameter]:
        """The matrices to optimise with Muon (arXiv 2502.16982): every linear map's weight."""
        return [m.weight for m in self.modules() if isinstance(m, nn.Linear)]

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block position-wise.

        Args:
            x: (b, n, d) (any leading shape works).

        Returns:
            (b, n, dim_out).
        """
        cfg = self.config
        if self.glu:
            value, gate = self._glu_halves(x)  # each (b, n, e)
            if cfg.glu_softclamp:
                value = softclamp(value, cfg.glu_up_softclamp_value)
            if torch.is_grad_enabled():
                hidden = value * self.act(gate)
            else:  # nothing to keep for backward: multiply in place, one (b, n, e) buffer less
                hidden = value.mul_(self.act(gate))
            if cfg.glu_mult_bias:
                hidden = hidden * self.mult_bias
        else:
            hidden = self.proj_in(x)  # (b, n, e)
            if cfg.softclamp_value is not None:
                hidden = softclamp(hidden, cfg.softclamp_value)
            hidden = self.act(hidden)
        if self.post_act_norm is not None:
            hidden = self.post_act_norm(hidden)
        hidden = self.proj_out(dropout_if_active(self.dropout, hidden))
        return dropout_if_active(self.sublayer_dropout, hidden)

    def _glu_halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``proj_in(x).chunk(2, -1)``; past a few rows, as two matmuls on the weight's halves.

        Each half then comes out contiguous, so the activation and the product run over dense
        memory (on CPU the chunks of one wide output are strided and slower to read), and two
        (d -> e) matmuls are no slower than one (d -> 2e). For a few rows (a decode step) the
        reads cost nothing and one matmul saves a call.
        """
        if x.numel() <= _FEW_ROWS * x.shape[-1]:
            return self.proj_in(x).chunk(2, dim=-1)
        weight, bias = self.proj_in.weight, self.proj_in.bias  # (2e, d), (2e,)
        inner = weight.shape[0] // 2
        halves = (slice(None, inner), slice(inner, None))
        return tuple(
            F.linear(x, weight[part], None if bias is None else bias[part]) for part in halves
        )


def zero_init_(linear: nn.Linear) -> None:
    """Set a linear map's weight (and bias) to zero: its layer starts as the identity."""
    nn.init.zeros_(linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
