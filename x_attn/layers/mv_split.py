"""Mean-variance split residual: Lu, "Mean Mode Screaming: Mean-Variance Split Residuals for
1000-Layer Diffusion Transformers", arXiv 2605.06169 (``mv_split_residual=True``).

The branch output ``f`` is split into its token mean ``mean(f)`` and its centred part. The
centred part joins the stream with a per-feature gain ``beta``; the stream's token mean is
leakily replaced by the branch's, with a per-feature rate ``alpha``::

    out = x + beta * (f - mean(f)) + alpha * (mean(f) - mean(x))

``alpha`` starts at 0 and ``beta`` at 0.03 (``residual_fn_kwargs``: ``init_alpha``,
``init_beta``). With ``learned=True`` both are linear maps of ``mean(f)`` (weights 0, biases
at the initial values), so they start as the constants.

The means run over the real tokens of the sequence (``mask``). In a causal stack token ``i``
takes the means of tokens ``<= i`` (a running mean), so no token reads a later one;
x-transformers 2.31 averages over the whole sequence there (docs/compat.md). The running mean
is not kept by a KV cache or by Transformer-XL memories, so such a stack decodes without a cache.

Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from x_attn.utils import check_positive_int

KWARGS = ("init_alpha", "init_beta", "learned")
CACHE_REASON = (
    "mv_split_residual takes token means over the sequence (running means in a causal stack), "
    "which the KV cache and Transformer-XL memories do not keep"
)


def token_mean(t: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
    """Mean of ``t`` (b, n, d) over the real tokens (``mask`` (b, n), True = real): (b, 1, d),
    or (b, n, d) running means over tokens ``<= i`` when ``causal``. No real token: 0."""
    dtype = torch.promote_types(t.dtype, torch.float32)  # running sums in >= float32
    w = torch.ones_like(t[..., :1], dtype=dtype) if mask is None else mask.unsqueeze(-1).to(dtype)
    total, count = t.to(dtype) * w, w
    if causal:
        total, count = total.cumsum(1), count.cumsum(1)
    else:
        total, count = total.sum(1, keepdim=True), count.sum(1, keepdim=True)
    return (total / count.clamp(min=1.0)).to(t.dtype)


class MVSplitResidual(nn.Module):
    """The mean-variance split update (see the module docstring).

    Args:
        dim: model width ``d``.
        scale: multiplier of the branch (0.5 for macaron halves).
        init_alpha: initial rate of the mean replacement.
        init_beta: initial gain of the centred update.
        learned: ``alpha`` and ``beta`` as linear maps of the branch's token mean.
    """

    reads_sequence = True  # the layer loop passes the padding mask and the causality

    def __init__(
        self,
        dim: int,
        scale: float = 1.0,
        init_alpha: float = 0.0,
        init_beta: float = 0.03,
        learned: bool = False,
    ) -> None:
        super().__init__()
        check_positive_int("dim", dim, "MVSplitResidual")
        self.scale, self.learned = float(scale), bool(learned)
        if learned:
            self.to_alpha, self.to_beta = nn.Linear(dim, dim), nn.Linear(dim, dim)
            for lin, init in ((self.to_alpha, init_alpha), (self.to_beta, init_beta)):
                nn.init.zeros_(lin.weight)
                nn.init.constant_(lin.bias, float(init))
        else:
            self.alpha = nn.Parameter(torch.full((dim,), float(init_alpha)))
            self.beta = nn.Parameter(torch.full((dim,), float(init_beta)))

    def forward(
        self, branch: Tensor, residual: Tensor, mask: Tensor | None = None, causal: bool = False
    ) -> Tensor:
        """Args: branch (b, n, d), residual (b, n, d), mask (b, n) True = real token.
        Returns: (b, n, d)."""
        f = self.scale * branch
        mean_f = token_mean(f, mask, causal)
        mean_x = token_mean(residual, mask, causal)
        if self.learned:
            alpha, beta = self.to_alpha(mean_f), self.to_beta(mean_f)
        else:
            alpha, beta = self.alpha, self.beta
        return residual + beta * (f - mean_f) + alpha * (mean_f - mean_x)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, learned={self.learned}"


def check_kwargs(kwargs: Any, owner: str) -> dict[str, Any]:
    """``residual_fn_kwargs`` of mv_split_residual: only its own keys, numbers and a bool."""
    if not isinstance(kwargs, dict):
        raise TypeError(f"{owner}: 'residual_fn_kwargs' must be a dict, got {type(kwargs)}")
    unknown = sorted(set(kwargs) - set(KWARGS))
    if unknown:
        raise ValueError(
            f"{owner}: residual_fn_kwargs {unknown} not understood; mv_split_residual takes "
            f"{', '.join(KWARGS)}"
        )
    for name in ("init_alpha", "init_beta"):
        value = kwargs.get(name, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{owner}: residual_fn_kwargs['{name}'] must be a number")
    if not isinstance(kwargs.get("learned", False), bool):
        raise TypeError(f"{owner}: residual_fn_kwargs['learned'] must be a bool")
    return dict(kwargs)
