"""Conditioning a stack on a vector: adaptive norms and adaptive layerscale.

Peebles & Xie, "Scalable Diffusion Models with Transformers" (DiT), arXiv 2212.09748: the
norms' gains (adaLN) and a gate on each branch output (adaLN-Zero) are regressed from a
condition ``c`` (b, dc) or (b, n, dc), passed to the stack's forward as ``condition=``.
With x-transformers' conventions:

- adaptive LayerNorm: ``LN(x) * (1 + W c)`` (LayerNorm without affine, ``W`` init 0);
- adaptive RMSNorm: ``sqrt(d) * x / ||x|| * (1 + W c)`` (``W`` init 0);
- adaptive layerscale: ``branch * sigmoid(W c + b)`` (``W`` init 0, ``b`` init -2);
- ``adaptive_condition_mlp``: ``c`` first goes through ``silu(W_c c)`` of width
  ``dim_condition * adaptive_condition_mlp_expansion`` (one MLP shared by every layer).

Shape legend: b batch, n sequence, d model dim, dc condition dim.
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from x_attn.layers.norms import unit_rms
from x_attn.utils import compute_dtype


class AdaptiveNorm(nn.Module):
    """LayerNorm (``rms=False``) or RMS normalization with a gain ``1 + W c``.

    Args:
        dim: normalized width ``d``.
        dim_condition: width of the condition ``dc``.
        rms: RMS normalization instead of LayerNorm.
    """

    conditioned = True

    def __init__(self, dim: int, dim_condition: int, rms: bool = False) -> None:
        super().__init__()
        self.dim, self.rms = dim, rms
        self.to_gamma = nn.Linear(dim_condition, dim, bias=False)
        nn.init.zeros_(self.to_gamma.weight)

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        """x (b, n, d), condition (b, 1 | n, dc) -> (b, n, d)."""
        wide = x.to(compute_dtype(x.dtype))  # statistics in float32 for half precision
        normed = unit_rms(x) if self.rms else F.layer_norm(wide, (self.dim,)).to(x.dtype)
        return normed * (self.to_gamma(condition) + 1.0)


class AdaptiveLayerScale(nn.Module):
    """``branch * sigmoid(W c + b)``: a per-feature gate on a branch output, near 0.12 at init.

    Args:
        dim: model width ``d``.
        dim_condition: width of the condition ``dc``.
        init_bias: initial ``b`` (x-transformers: -2).
    """

    conditioned = True

    def __init__(self, dim: int, dim_condition: int, init_bias: float = -2.0) -> None:
        super().__init__()
        self.to_gamma = nn.Linear(dim_condition, dim)
        nn.init.zeros_(self.to_gamma.weight)
        nn.init.constant_(self.to_gamma.bias, init_bias)

    def forward(self, branch: Tensor, condition: Tensor) -> Tensor:
        """branch (b, n, d), condition (b, 1 | n, dc) -> (b, n, d)."""
        return branch * self.to_gamma(condition).sigmoid()


def condition_mlp(dim_condition: int, expansion: int) -> nn.Module:
    """``silu(W c)`` from ``dc`` to ``dc * expansion`` features (no bias)."""
    return nn.Sequential(nn.Linear(dim_condition, dim_condition * expansion, bias=False), nn.SiLU())


def apply_norm(norm: nn.Module, x: Tensor, condition: Tensor | None) -> Tensor:
    """``norm(x)``, or ``norm(x, condition)`` for a conditioned norm."""
    # a class attribute: looked up on the type, a plain norm costs no failed module lookup
    return norm(x, condition) if getattr(type(norm), "conditioned", False) else norm(x)


def check_condition(
    condition: Tensor | None, needed: bool, dim_condition: int, b: int, n: int, owner: str
) -> Tensor | None:
    """The forward's ``condition`` as (b, 1 | n, dc), checked against the stack's needs."""
    if condition is None:
        if needed:
            raise ValueError(
                f"{owner}: this stack has adaptive norms / layerscale; pass "
                f"condition=(batch, {dim_condition}) or (batch, seq, {dim_condition})"
            )
        return None
    if not needed:
        raise ValueError(
            f"{owner}: 'condition' given, but nothing in this stack reads it; build it with "
            "use_adaptive_layernorm, use_adaptive_rmsnorm or use_adaptive_layerscale"
        )
    if not condition.is_floating_point() or condition.ndim not in (2, 3):
        raise ValueError(
            f"{owner}: 'condition' must be a float tensor (batch, {dim_condition}) or "
            f"(batch, seq, {dim_condition}), got {condition.dtype} {tuple(condition.shape)}"
        )
    if condition.ndim == 2:
        condition = rearrange(condition, "b dc -> b 1 dc")
    if condition.shape[0] != b or condition.shape[1] not in (1, n):
        raise ValueError(
            f"{owner}: 'condition' must have shape (batch={b}, {dim_condition}) or "
            f"(batch={b}, seq={n}, {dim_condition}), got {tuple(condition.shape)}"
        )
    if condition.shape[-1] != dim_condition:
        raise ValueError(
            f"{owner}: 'condition' has {condition.shape[-1]} features, but the stack was "
            f"built with dim_condition={dim_condition}"
        )
    return condition


def stack_condition(
    stack: nn.Module, condition: Tensor | None, b: int, n: int, mems: list | None
) -> Tensor | None:
    """A stack forward's condition (b, 1 | n, dc') as its norms read it (after the MLP)."""
    owner = type(stack).__name__
    dim = stack.config.dim_condition or stack.dim
    condition = check_condition(condition, stack.needs_condition, dim, b, n, owner)
    if condition is not None and mems is not None and condition.shape[1] > 1:
        raise ValueError(
            f"{owner}: a per-token condition (batch, seq, dim) has no rows for the mems; pass "
            "one condition per sample (batch, dim_condition)"
        )
    if condition is not None and stack.condition_mlp is not None:
        condition = stack.condition_mlp(condition)
    return condition


def fix_condition(stack: nn.Module, condition: Tensor) -> None:
    """Make ``stack`` use ``condition`` (1, dc) (repeated over the batch) whenever a call gives
    none: for code that cannot pass ``condition=`` itself (docs pictures, generic test harnesses).
    """

    def add_condition(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if kwargs.get("condition") is None:
            x = args[0] if args else kwargs["x"]
            fixed = condition.to(x.dtype).expand(x.shape[0], -1)
            kwargs = {**kwargs, "condition": fixed}
        return args, kwargs

    stack.register_forward_pre_hook(add_condition, with_kwargs=True)
