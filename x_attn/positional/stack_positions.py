"""Builds the per-forward PositionContext of a stack from its positional flags.

Shape legend: b batch, h heads, i queries, j / k positions covered, r rotary dim.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from x_attn.config import LayersConfig
from x_attn.positional.absolute import sinusoidal_table
from x_attn.positional.alibi import AlibiPositionalBias
from x_attn.positional.context import PositionContext
from x_attn.positional.rotary import RotaryEmbedding
from x_attn.positional.t5 import T5RelativePositionBias


def default_rotary_dim(dim_head: int) -> int:
    """x-transformers' default rotary dim: max(dim_head // 2, 32), capped at dim_head, even."""
    r = min(max(dim_head // 2, 32), dim_head)
    return r - r % 2


def requested_rotary_dim(config: LayersConfig) -> int | None:
    """The rotary dim a stack offers its self-attention projections (None without rotary).

    A projection with a separate rotary part (MLA's decoupled rotary dims) is sized by it.
    """
    if not config.rotary_pos_emb:
        return None
    return config.rotary_emb_dim or default_rotary_dim(config.attn.dim_head)


class StackPositions(nn.Module):
    """The positional modules shared by every layer of one stack (computed once per forward).

    T5 bias (one learned table for the whole stack, as in T5), ALiBi, rotary angles and the
    sinusoids of position-infused attention.
    """

    def __init__(
        self, config: LayersConfig, qk_dim: int, owner: str, rotary_dim: int | None = None
    ) -> None:
        """``rotary_dim``: the rotary dim the layers' projections were built for, if fixed."""
        super().__init__()
        self.rotary = self.rel_pos = None
        self.infused_dim = config.dim if config.position_infused_attn else None
        if config.rotary_pos_emb:
            r = rotary_dim or config.rotary_emb_dim or default_rotary_dim(qk_dim)
            if r > qk_dim:
                raise ValueError(
                    f"{owner}: rotary_emb_dim={r} exceeds the query/key head dim {qk_dim}; "
                    "lower rotary_emb_dim or raise attn_dim_head"
                )
            self.rotary = RotaryEmbedding(
                r, base=config.rotary_base, interpolation_factor=config.rotary_interpolation_factor
            )
        if config.rel_pos_bias:
            self.rel_pos = T5RelativePositionBias(
                config.heads,
                causal=config.causal,
                num_buckets=config.rel_pos_num_buckets,
                max_distance=config.rel_pos_max_distance,
            )
        elif config.alibi_pos_bias:
            self.rel_pos = AlibiPositionalBias(
                config.alibi_num_heads or config.heads, total_heads=config.heads
            )

    @property
    def is_relative(self) -> bool:
        """True when positions enter every layer (rotary, T5, ALiBi, infused)."""
        return any(x is not None for x in (self.rotary, self.rel_pos, self.infused_dim))

    def forward(
        self,
        q_len: int,
        k_len: int,
        device: torch.device,
        dtype: torch.dtype,
        start: int = 0,
        rows: Tensor | None = None,
    ) -> PositionContext:
        """Tables for positions start ... start + k_len - 1, the last q_len being the queries.

        ``rows`` (b, k_len): each row's own positions of those absolute positions (padding
        takes none, see :mod:`x_attn.positional.row_positions`); the tables are then per row.
        """
        context = PositionContext(q_len=q_len, k_len=k_len, start=start)
        if not self.is_relative:
            return context
        k_pos = torch.arange(start, start + k_len, device=device) if rows is None else rows
        q_pos = k_pos[..., k_len - q_len :]
        table_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        if self.rotary is not None:
            angles = self.rotary(k_pos, dtype=table_dtype)  # (k, r/2) or (b, k, r/2)
            context.rotary = angles if rows is None else angles.unsqueeze(1)
        if self.rel_pos is not None:
            context.bias = (
                self.rel_pos(q_pos, k_pos) if rows is None else self._row_bias(q_pos, k_pos)
            )
        if self.infused_dim is not None:
            table = sinusoidal_table(k_pos.flatten(), self.infused_dim, dtype=table_dtype)
            context.infused = table.unflatten(0, k_pos.shape)
        return context

    def _row_bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """(b, h, i, j) T5 / ALiBi bias of per-row positions q_pos (b, i) and k_pos (b, j).

        Both depend on the distance k - q only: the bias of every distance that occurs is
        computed once (one query at 0, keys at each distance) and gathered per row.
        """
        rel = k_pos.unsqueeze(-2) - q_pos.unsqueeze(-1)  # (b, i, j)
        low, high = int(rel.min()), int(rel.max())
        by_distance = self.rel_pos(
            torch.zeros(1, dtype=torch.long, device=rel.device),
            torch.arange(low, high + 1, device=rel.device),
        )[:, 0]  # (h, distances)
        return by_distance[:, rel - low].transpose(0, 1)
