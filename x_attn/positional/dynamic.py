"""Dynamic position bias: a small MLP maps each relative position to one bias per head.

Continuous relative position bias of Swin Transformer V2 (Liu et al., arXiv 2111.09883), in
the 1-D form of x-transformers' ``dynamic_pos_bias``: the input of the MLP is the distance
``query position - key position`` (``log_distance``: ``sign(x) * ln(1 + |x|)``, SwinV2's
log-spaced coordinates), the MLP is ``Linear(1, w)`` then ``depth - 1`` times
``Linear(w, w)``, each followed by an optional LayerNorm and SiLU, and ``Linear(w, heads)``
last, with ``w = dim // 4``. One MLP serves every layer of the stack. It is evaluated once per
distinct distance, so the cost is O(i + j) MLP calls and an (h, i, j) gather.

Shape legend: h heads, i queries, j keys, u distinct distances, w MLP width.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from x_attn.layers.norms import LayerNorm
from x_attn.positional.bias import check_positions, heads_first, pairwise
from x_attn.utils import check_positive_int


class DynamicPositionBias(nn.Module):
    """bias[h, a, b] = MLP(f(q_pos[a] - k_pos[b]))[h], f the identity or the signed log.

    Args:
        dim: MLP width (x-transformers: model dim // 4).
        heads: number of attention heads.
        depth: hidden layers of the MLP (>= 1).
        log_distance: feed ``sign(x) * ln(1 + |x|)`` instead of the distance x.
        norm: LayerNorm after each hidden linear layer.
    """

    def __init__(
        self, dim: int, heads: int, depth: int = 2, log_distance: bool = False, norm: bool = False
    ) -> None:
        super().__init__()
        owner = "DynamicPositionBias"
        for name, value in (("dim", dim), ("heads", heads), ("depth", depth)):
            check_positive_int(name, value, owner)
        self.heads, self.log_distance = heads, log_distance
        layers: list[nn.Module] = []
        for width_in in [1] + [dim] * (depth - 1):
            layers += [nn.Linear(width_in, dim), LayerNorm(dim) if norm else nn.Identity()]
            layers.append(nn.SiLU())
        self.mlp = nn.Sequential(*layers, nn.Linear(dim, heads))

    def features(self, distance: Tensor) -> Tensor:
        """The MLP input of a distance: itself, or ``sign(x) * ln(1 + |x|)``."""
        if not self.log_distance:
            return distance
        return torch.sign(distance) * torch.log1p(distance.abs())

    def forward(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """Bias for every (query, key) pair.

        Args:
            q_pos: query positions ``(i,)``, ``(b, i)`` per sample or ``(b, heads, i)`` per head.
            k_pos: key positions in the same layout.

        Returns:
            ``(h, i, j)`` (shared positions) or ``(b, h, i, j)`` bias in the MLP's dtype.
        """
        for name, pos in (("q_pos", q_pos), ("k_pos", k_pos)):
            check_positions(name, pos, "DynamicPositionBias", self.heads)
        weight = self.mlp[0].weight
        distance = pairwise(q_pos, k_pos)
        distinct, index = torch.unique(distance, return_inverse=True)
        per_head = self.mlp(self.features(distinct.to(weight.dtype)).unsqueeze(-1))  # (u, h)
        return heads_first(per_head[index], q_pos.ndim)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, log_distance={self.log_distance}"
