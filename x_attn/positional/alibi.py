"""ALiBi: attention with linear biases.

Train Short, Test Long: Attention with Linear Biases Enables Input Length Extrapolation
(Press et al., arXiv 2108.12409). Slopes follow the official ``get_slopes`` rule
(mechanisms.md section 14.1). The bias is the symmetric ``-m_h * |i - j|``, which equals the
paper's ``-m_h * (i - j)`` under a causal mask and also serves encoders.

Shape legend: h heads, i query sequence, j key sequence.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from x_attn.utils import check_positive_int, default


def _geometric_slopes(count: int, heads_pow2: int) -> Tensor:
    """First ``count`` slopes ``2 ** (-8 h / heads_pow2)``, ``h = 1 ... count`` (float64)."""
    h = torch.arange(1, count + 1, dtype=torch.float64)
    return torch.exp2(-8.0 * h / heads_pow2)


def alibi_slopes(heads: int) -> Tensor:
    """Per-head ALiBi slopes.

    For a power of two ``H``: ``m_h = 2 ** (-8 h / H)``, ``h = 1 ... H``. Otherwise, with
    ``p = 2 ** floor(log2 H)``: the ``p`` slopes for ``p`` heads, followed by every other slope
    (the 1st, 3rd, ...) of the ``2p`` sequence for the remaining ``H - p`` heads.

    Args:
        heads: number of heads that get a bias.

    Returns:
        ``(heads,)`` float64 slopes.
    """
    check_positive_int("heads", heads, "alibi_slopes")
    p = 2 ** int(math.floor(math.log2(heads)))
    base = _geometric_slopes(p, p)
    if p == heads:
        return base
    extra = _geometric_slopes(2 * p, 2 * p)[0::2][: heads - p]
    return torch.cat((base, extra))


class AlibiPositionalBias(nn.Module):
    """Fixed linear distance penalty per head.

    Args:
        heads: number of heads that get a bias (slopes are computed for this many heads).
        total_heads: number of attention heads; heads ``heads:`` get zero bias.
            Defaults to ``heads``.
    """

    def __init__(self, heads: int, total_heads: int | None = None) -> None:
        super().__init__()
        owner = "AlibiPositionalBias"
        check_positive_int("heads", heads, owner)
        total_heads = default(total_heads, heads)
        check_positive_int("total_heads", total_heads, owner)
        if heads > total_heads:
            raise ValueError(
                f"{owner}: 'heads' ({heads}) biased heads cannot exceed 'total_heads' "
                f"({total_heads}); lower 'heads' (alibi_num_heads) to at most {total_heads}"
            )
        self.heads = heads
        self.total_heads = total_heads

    def forward(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """Bias for every (query, key) pair.

        Args:
            q_pos: ``(i,)`` absolute query positions (``p0 + arange(i)`` with a cache).
            k_pos: ``(j,)`` absolute key positions (the whole cache length when decoding).

        Returns:
            ``(total_heads, i, j)`` float32 bias ``-slope_h * |q_pos[a] - k_pos[b]|`` for the
            first ``heads`` heads and zeros for the others.
        """
        for name, pos in (("q_pos", q_pos), ("k_pos", k_pos)):
            if pos.ndim != 1:
                raise ValueError(
                    f"AlibiPositionalBias: '{name}' must be a 1-D tensor of absolute positions, "
                    f"got shape {tuple(pos.shape)}"
                )
        device = q_pos.device
        # float64 where available so large absolute positions keep their exact distance
        wide = torch.float32 if device.type == "mps" else torch.float64
        dist = (rearrange(q_pos.to(wide), "i -> i 1") - rearrange(k_pos.to(wide), "j -> 1 j")).abs()
        slopes = alibi_slopes(self.heads).to(device=device, dtype=wide)
        bias = -rearrange(slopes, "h -> h 1 1") * dist
        bias = bias.to(torch.float32)
        pad = self.total_heads - self.heads
        if pad == 0:
            return bias
        zeros = bias.new_zeros((pad, *bias.shape[1:]))
        return torch.cat((bias, zeros), dim=0)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, total_heads={self.total_heads}"
