"""Position-wise feed-forward block, with optional gated linear units.

Plain: ``proj_out(dropout(act(proj_in(x))))`` (Vaswani et al., arXiv 1706.03762).
GLU variants: Shazeer, "GLU Variants Improve Transformer", arXiv 2002.05202. ``proj_in``
produces twice the inner width, split into ``(value, gate)``; the hidden state is
``value * act(gate)``: GEGLU with GELU, SwiGLU with SiLU (``swish=True``).

Shape legend: b batch, n sequence, d model dim, e inner dim (``int(d * mult)``).
"""

from __future__ import annotations

import difflib
from dataclasses import fields
from typing import Any

from torch import Tensor, nn

from x_attn.config import FeedForwardConfig
from x_attn.utils import check_positive_int, default, exists

_OWNER = "FeedForward"


def _config_from_kwargs(kwargs: dict[str, Any]) -> FeedForwardConfig:
    """Build a FeedForwardConfig from x-transformers style kwargs (mult, glu, ...)."""
    known = [f.name for f in fields(FeedForwardConfig)]
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
    config = config if exists(config) else _config_from_kwargs(kwargs)
    config.validate(_OWNER)
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
        self.act = nn.SiLU() if config.swish else nn.GELU()
        self.dropout = nn.Dropout(config.dropout)
        self.proj_out = nn.Linear(inner, dim_out, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block position-wise.

        Args:
            x: (b, n, d) (any leading shape works).

        Returns:
            (b, n, dim_out).
        """
        hidden = self.proj_in(x)  # (b, n, e) or (b, n, 2e) with glu
        if self.glu:
            value, gate = hidden.chunk(2, dim=-1)  # each (b, n, e)
            hidden = value * self.act(gate)
        else:
            hidden = self.act(hidden)
        return self.proj_out(self.dropout(hidden))
