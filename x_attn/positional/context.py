"""Per-forward positional context shared by every layer of a stack.

The stack computes positional tables once per forward (rotary angles, the T5 / ALiBi bias,
position-infused sinusoids) over a range of absolute positions and hands them to each attention
layer. Each layer takes the rows of the positions it projects (:meth:`PositionContext.rows`)
and the bias of the keys it holds (:meth:`PositionContext.bias_for`), so layers that hold
different keys (a window next to a full layer) share one context. Queries are always the
newest ``q_len`` positions.

Shape legend: b batch, n rows, r rotary dim, d model dim, h heads, i queries, j keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from x_attn.masks.spec import Span
from x_attn.positional.rotary import apply_rotary


@dataclass(frozen=True, slots=True)
class RowPositions:
    """Positional tables of the rows one projection call projects (queries or new keys).

    Attributes:
        rotary: (n, r/2) rotary angles, (b, 1, n, r/2) per row, or None.
        infused: (n, d) sinusoids added to the query/key inputs, (b, n, d) per row, or None.
    """

    rotary: Tensor | None = None
    infused: Tensor | None = None

    def infuse(self, x: Tensor) -> Tensor:
        """Query/key input (b, n, d) plus the position-infused sinusoids of these rows."""
        return x if self.infused is None else x + self.infused.to(x.dtype)

    def rotate(self, t: Tensor) -> Tensor:
        """Rotary rotation of (..., n, dq) queries or keys at these rows' positions."""
        return t if self.rotary is None else apply_rotary(t, self.rotary)


NO_POSITIONS = RowPositions()


@dataclass
class PositionContext:
    """Positional tables for one forward.

    The tables are shared by every row, or per row when padding gives rows different
    positions (see :mod:`x_attn.positional.row_positions`); the position axis is always the
    second to last (rotary, infused) or the last two (bias).

    Attributes:
        q_len: number of queries (the newest positions).
        k_len: number of positions the tables cover, ending with the queries' last one.
        rotary: (k_len, r/2) or (b, 1, k_len, r/2) rotary angles, or None.
        bias: (h, q_len, k_len) or (b, h, q_len, k_len) additive logit bias (T5 / ALiBi).
        infused: (k_len, d) or (b, k_len, d) sinusoids added to query/key inputs
            (position-infused attention).
        start: absolute position of the first table row (0 unless the stack dropped older
            positions from every layer).
    """

    q_len: int
    k_len: int
    rotary: Tensor | None = None
    bias: Tensor | None = None
    infused: Tensor | None = None
    start: int = 0

    @property
    def stop(self) -> int:
        """One past the newest position (the last query's position + 1)."""
        return self.start + self.k_len

    @property
    def queries(self) -> Span:
        """Absolute positions of the queries."""
        return Span(self.stop - self.q_len, self.stop)

    def rows(self, span: Span) -> RowPositions:
        """The rotary / infused rows of the absolute positions ``span``."""
        if self.rotary is None and self.infused is None:
            return NO_POSITIONS
        a, b = span.start - self.start, span.stop - self.start
        rotary = None if self.rotary is None else self.rotary[..., a:b, :]
        infused = None if self.infused is None else self.infused[..., a:b, :]
        return RowPositions(rotary, infused)

    def bias_for(self, q: Span, k: Span, pinned: tuple[int, ...] = ()) -> Tensor | None:
        """(..., i, j) bias of queries ``q`` and keys ``k`` (absolute positions), or None.

        ``pinned``: absolute positions of older keys in front of ``k`` (their columns first).
        """
        if self.bias is None:
            return None
        first_query = self.stop - self.q_len
        rows = self.bias[..., q.start - first_query : q.stop - first_query, :]
        span = rows[..., k.start - self.start : k.stop - self.start]
        if not pinned:
            return span
        columns = torch.tensor([p - self.start for p in pinned], device=rows.device)
        return torch.cat((rows.index_select(-1, columns), span), dim=-1)
