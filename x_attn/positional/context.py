"""Per-forward positional context shared by every layer of a stack.

The stack computes positional tables once per forward (rotary cos/sin, the T5 / ALiBi /
dynamic bias, position-infused sinusoids) over a range of absolute positions and hands them to
each attention layer. Each layer takes the rows of the positions it projects
(:meth:`PositionContext.rows`) and the bias of the keys it holds
(:meth:`PositionContext.bias_for`), so layers that hold different keys (a window next to a full
layer) share one context. Queries are always the newest ``q_len`` positions.

Positions are *slots* (the index of a token in the stream, what caches and masks count) with
*values* (the position a positional method sees): by default the value of slot ``p`` is ``p``;
custom positions (``pos=`` in forward) give other values (:meth:`PositionContext.values_of`),
and so does padding, which takes no position (see :mod:`x_attn.positional.row_positions`): the
tables are then per row.

Shape legend: n rows, f rotary frequencies (r/2), d model dim, h heads, i queries, j keys,
b batch (1 when shared).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from x_attn.masks.spec import Span
from x_attn.positional.rotary import RotaryTable


@dataclass(frozen=True, slots=True)
class RowPositions:
    """Positional tables of the rows one projection call projects (queries or new keys).

    Attributes:
        rotary: the rotary table of these rows, or None.
        infused: (b, n, d) or (n, d) sinusoids added to the query/key inputs, or None.
        key: these rows are keys (xPos divides keys by the factor that multiplies queries).
    """

    rotary: RotaryTable | None = None
    infused: Tensor | None = None
    key: bool = False

    def infuse(self, x: Tensor) -> Tensor:
        """Query/key input (b, n, d) plus the position-infused sinusoids of these rows."""
        return x if self.infused is None else x + self.infused.to(x.dtype)

    def rotate(self, t: Tensor) -> Tensor:
        """Rotary rotation of (..., n, dq) queries or keys at these rows' positions."""
        return t if self.rotary is None else self.rotary.rotate(t, key=self.key)


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
        rotary: rotary table of the k_len positions (rows (b, k_len, f) or (k_len, f)), or
            None. Raw (k_len, f) angles are accepted and turned into a table.
        bias: (h, q_len, k_len) or (b, h, q_len, k_len) additive logit bias (T5 / ALiBi /
            dynamic) or None.
        infused: (k_len, d) or (b, k_len, d) sinusoids added to query/key inputs
            (position-infused attention).
        start: slot of the first table row (0 unless the stack dropped older positions from
            every layer).
        values: (b, k_len) position values of the k_len slots when they are not the slots
            themselves (custom positions), else None.
        context_rotary: rotary table of a cross-attention context (``context_pos``), or None.
    """

    q_len: int
    k_len: int
    rotary: RotaryTable | Tensor | None = None
    bias: Tensor | None = None
    infused: Tensor | None = None
    start: int = 0
    values: Tensor | None = None
    context_rotary: RotaryTable | None = None
    _last_rows: tuple | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.rotary, Tensor):
            self.rotary = RotaryTable.from_angles(self.rotary)

    @property
    def stop(self) -> int:
        """One past the newest position (the last query's position + 1)."""
        return self.start + self.k_len

    @property
    def queries(self) -> Span:
        """Absolute positions (slots) of the queries."""
        return Span(self.stop - self.q_len, self.stop)

    def rows(self, span: Span, key: bool = False) -> RowPositions:
        """The rotary / infused rows of the slots ``span`` (as keys when ``key``).

        The rows of the last span asked for are kept (every layer of a decode step asks for the
        same one, for its queries and its new keys), as long as the tables are the same.
        """
        if self.rotary is None and self.infused is None:
            return NO_POSITIONS
        a, b = span.start - self.start, span.stop - self.start
        last = self._last_rows
        if (
            last is not None
            and last[:2] == (a, b)
            and last[2] is self.rotary
            and last[3] is self.infused
        ):
            rotary, infused = last[4]
        else:
            rotary = None if self.rotary is None else self.rotary.rows(a, b)
            infused = None if self.infused is None else self.infused[..., a:b, :]
            self._last_rows = (a, b, self.rotary, self.infused, (rotary, infused))
        return RowPositions(rotary, infused, key)

    def context_rows(self) -> RowPositions:
        """The rotary rows of a cross-attention context (keys), or no positions."""
        if self.context_rotary is None:
            return NO_POSITIONS
        return RowPositions(self.context_rotary, None, key=True)

    def values_of(self, span: Span, device: torch.device | None = None) -> Tensor:
        """(b or 1, n) position values of the slots ``span`` (the slots themselves by default)."""
        if self.values is None:
            return span.arange(device).unsqueeze(0)
        return self.values[..., span.start - self.start : span.stop - self.start]

    def bias_for(self, q: Span, k: Span, pinned: tuple[int, ...] = ()) -> Tensor | None:
        """(..., i, j) bias of queries ``q`` and keys ``k`` (slots), or None.

        ``pinned``: slots of older keys in front of ``k`` (their columns first).
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
