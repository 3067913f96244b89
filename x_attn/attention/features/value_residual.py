"""Value residual learning: ResFormer (Zhou et al., arXiv 2410.17897).

The first attention layer of each kind (self, cross) hands its projected values to every later
layer of that kind, which mixes them into its own before attending:
``v_l = v_1 + lambda * (v_l - v_1)`` (a lerp from v_1 to v_l). ``lambda`` is 0.5, or, with
``learned_value_residual_mix`` (self-attention layers), ``sigmoid(W x_j + b)`` per key row and
value head, computed from the row's input. Mixing is row-wise, so a KV cache and
Transformer-XL memories see the same values as one full pass.

Stack flags ``add_value_residual`` and ``learned_value_residual_mix`` (default True, as in
x-transformers; only self-attention layers learn the mix).

Shape legend: b batch, j key rows, hv value heads, dv value head dim, dc key rows' input dim.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureContext, FeatureSpec
from x_attn.attention.features.stages import ValueTransform


class ValueResidual(ValueTransform):
    """Mixes the first layer's values into this layer's (identity for the first layer).

    Args:
        role: "source" (the first layer: nothing to mix), "fixed" (lambda = 0.5) or "learned".
        dim: input dim of the key rows (for the learned mix).
        v_heads: value heads (one learned lambda per head and row).
    """

    def __init__(self, role: str, dim: int, v_heads: int) -> None:
        super().__init__()
        self.role = role
        self.to_mix = nn.Linear(dim, v_heads) if role == "learned" else None

    def forward(self, v: Tensor, rows: Tensor, residual: Tensor | None) -> Tensor:
        if residual is None or self.role == "source":
            return v
        if residual.shape != v.shape:
            raise ValueError(
                f"add_value_residual: the first layer's values {tuple(residual.shape)} do not "
                f"match this layer's {tuple(v.shape)}; every layer of one kind must project "
                "the same key rows with the same value heads"
            )
        return torch.lerp(residual.to(v.dtype), v, self.mix(rows, v))

    def mix(self, rows: Tensor, v: Tensor) -> Tensor | float:
        """lambda: 0.5, or (b, hv, j, 1) from the key rows (b, j, dc)."""
        if self.to_mix is None:
            return 0.5
        return rearrange(self.to_mix(rows).sigmoid(), "b j h -> b h j 1").to(v.dtype)


def value_residual_roles(
    types: tuple[str, ...], add: bool, learned: bool, order: tuple[int, ...] | None = None
) -> list[str | None]:
    """The role of each layer of a stack ('a', 'c', 'f' letters): the first of its kind to run
    (in ``order``, module indices; default: built order) is the "source"; the other
    self-attention layers "learned" or "fixed", cross-attention "fixed"."""
    order = tuple(range(len(types))) if order is None else order
    source: dict[str, int] = {}
    for index in order:
        source.setdefault(types[index], index)
    roles: list[str | None] = []
    for index, kind in enumerate(types):
        if not add or kind == "f":
            roles.append(None)
            continue
        later = "learned" if learned and kind == "a" else "fixed"
        roles.append("source" if source.get(kind) == index else later)
    return roles


def _build(ctx: FeatureContext) -> ValueResidual:
    dim = ctx.dim_context or ctx.dim  # key rows: the context, or x itself
    return ValueResidual(ctx.value_residual, dim, ctx.projection.v_heads)


VALUE_RESIDUAL_SPEC = FeatureSpec(
    "value_residual",
    "2410.17897",
    "values",
    enabled=lambda ctx: ctx.value_residual is not None,
    build=_build,
    flag_of=lambda ctx: "add_value_residual",
)
