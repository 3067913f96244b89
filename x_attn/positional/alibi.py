"""ALiBi: attention with linear biases.

Train Short, Test Long: Attention with Linear Biases Enables Input Length Extrapolation
(Press et al., arXiv 2108.12409). Slopes follow the official ``get_slopes`` rule
(mechanisms.md section 14.1). The bias is the symmetric ``-m_h * |i - j|``, which equals the
paper's ``-m_h * (i - j)`` under a causal mask and also serves encoders. Slopes may be given
(x-transformers' ``rel_pos_kwargs=dict(slopes=[...])``) and positions may be per sample or per
head (custom positions in forward).

Shape legend: h heads, i query sequence, j key sequence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from x_attn.positional.bias import check_positions, pairwise
from x_attn.positional.checks import check_slopes
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
        slopes: custom slopes, one per biased head (x-transformers' ``rel_pos_kwargs``);
            None: the paper's geometric slopes.
    """

    def __init__(
        self, heads: int, total_heads: int | None = None, slopes: Sequence[float] | None = None
    ) -> None:
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
        if slopes is not None:
            check_slopes(slopes, heads, owner)
        self.heads = heads
        self.total_heads = total_heads
        self.custom_slopes = None if slopes is None else tuple(float(s) for s in slopes)

    def slopes(self) -> Tensor:
        """(total_heads,) float64 slopes; zeros for the heads without a bias."""
        found = (
            alibi_slopes(self.heads)
            if self.custom_slopes is None
            else torch.tensor(self.custom_slopes, dtype=torch.float64)
        )
        return F.pad(found, (0, self.total_heads - self.heads))

    def forward(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """Bias for every (query, key) pair.

        Args:
            q_pos: absolute query positions: ``(i,)`` (``p0 + arange(i)`` with a cache),
                ``(b, i)`` per sample or ``(b, total_heads, i)`` per head.
            k_pos: key positions in the same layout (the whole cache length when decoding).

        Returns:
            float32 bias ``-slope_h * |q_pos[a] - k_pos[b]|`` for the first ``heads`` heads and
            zeros for the others: ``(total_heads, i, j)`` for shared positions, else
            ``(b, total_heads, i, j)``.
        """
        for name, pos in (("q_pos", q_pos), ("k_pos", k_pos)):
            check_positions(name, pos, "AlibiPositionalBias", self.total_heads)
        device = q_pos.device
        # float64 where available so large absolute positions keep their exact distance
        wide = torch.float32 if device.type == "mps" else torch.float64
        dist = pairwise(q_pos.to(wide), k_pos.to(wide)).abs()
        if q_pos.ndim == 2:  # per sample: one distance matrix for every head
            dist = rearrange(dist, "b i j -> b 1 i j")
        slopes = rearrange(self.slopes().to(device=device, dtype=wide), "h -> h 1 1")
        return (-slopes * dist).to(torch.float32)

    def extra_repr(self) -> str:
        custom = ", custom slopes" if self.custom_slopes is not None else ""
        return f"heads={self.heads}, total_heads={self.total_heads}{custom}"
