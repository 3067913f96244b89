"""Attention masks described over absolute positions, merged into one dense tensor in one place.

A mask is a description, not a tensor: the absolute positions of the queries and of the keys
that carry one, predicates over (query position, key position) such as causality (one
:class:`MaskRule` per file: ``causal.py``; a window, global tokens, strided or block-random
pattern, a prefix are further rules), the key padding and an optional user mask. A kernel that
understands a rule reads it directly (a blockwise kernel needs "window w, causal", not a dense
(i, j) mask); every other kernel calls :meth:`AttnMask.dense`, the only place where masks are
merged.

Conventions: True = may attend. Queries and keys are placed by absolute position, so causality
is ``k_pos <= q_pos`` (with the queries being the newest positions this is the bottom-right
alignment). Keys in front of the positional ones ("free" keys: learned memory key/values) have
no position and are always visible. A query row with nothing to attend returns zeros (each
kernel ensures it).

Shape legend: b batch, h heads, i queries, j keys (f free + p positional keys).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


class Span:
    """The contiguous absolute positions ``start ... stop - 1`` (a value; never mutated).

    A plain slotted class rather than a frozen dataclass: several are made per layer and
    decode step, and this is twice as fast to build.
    """

    __slots__ = ("start", "stop")

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Span):
            return NotImplemented
        return self.start == other.start and self.stop == other.stop

    def __hash__(self) -> int:
        return hash((self.start, self.stop))

    def __repr__(self) -> str:
        return f"Span({self.start}, {self.stop})"

    def arange(self, device: torch.device | None = None) -> Tensor:
        return torch.arange(self.start, self.stop, device=device)

    def last(self, n: int) -> Span:
        """The newest ``n`` positions of this span."""
        return Span(self.stop - n, self.stop)


class MaskRule:
    """A predicate over absolute positions, True = may attend; one mask family per subclass.

    ``kind`` names the family for kernels that read rules instead of dense masks.
    """

    kind: ClassVar[str] = ""
    takes_global_tokens: ClassVar[bool] = False  # reads a call's global_mask (see below)
    # its pattern is anchored at absolute slots (block boundaries), not only at distances:
    # left padding would move a padded row's tokens across them, so it is refused
    slot_anchored: ClassVar[bool] = False

    def allows(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """Query positions (..., i, 1), key positions (..., 1, p) -> (..., i, p) bool.

        Any broadcastable position tensors work (kernels evaluate rules on blocks of positions).
        A rule that depends on the batch row (per-sample global tokens) returns
        (b, 1, i, p) for 2-D positions.
        """
        raise NotImplementedError

    def hides_nothing(self, q: Span, k: Span) -> bool:
        """True when the rule allows every (query, key) pair of these spans (no mask needed)."""
        return False

    def for_length(self, length: int) -> MaskRule:
        """This rule for a self-attention call whose newest key sits at position
        ``length - 1``. Rules whose pattern depends on the sequence length (BigBird's last
        global block) bind it here; the others return themselves."""
        return self

    def with_global_tokens(self, span: Span, marked: Tensor) -> MaskRule:
        """This rule for a call whose key rows ``span`` have ``marked`` (b, j) global tokens
        (True = global: attends everywhere, attended by all). Rules without global tokens
        ignore them (``takes_global_tokens`` False)."""
        return self


@dataclass(slots=True)
class AttnMask:
    """Which keys each query may attend to, over absolute positions.

    Attributes:
        q: positions of the queries (i of them).
        k: positions of the positional keys (p of them, the last p keys).
        rules: predicates over (query, key) positions, all of which must allow a pair.
        key_padding: (b, p) bool, True = real key; None = no padding.
        user: the caller's bool mask over (queries, positional keys): (i, p'), (h, i, p') or
            (b|1, h|1, i, p'), right-aligned on the key axis (its last column is the newest
            key), p' >= p; None = no user mask.
        free: number of keys in front of the positional ones (no position; visible unless
            ``free_padding`` hides them).
        free_padding: (b, free) bool, True = the free key may be attended; None = all visible.
        pinned: absolute positions of keys placed between the free keys and the span ``k``:
            older keys a layer keeps outside its contiguous span (the global tokens a
            sliding-window cache keeps). They count among the positional keys (``key_padding``
            and the bias cover them; the rules see their positions); the user mask does not
            reach them (they are visible to it).
    """

    q: Span
    k: Span
    rules: tuple[MaskRule, ...] = ()
    key_padding: Tensor | None = None
    user: Tensor | None = None
    free: int = 0
    free_padding: Tensor | None = None
    pinned: tuple[int, ...] = ()

    def key_positions(self, device: torch.device | None = None) -> Tensor:
        """(p,) absolute positions of the positional keys: the pinned ones, then the span."""
        span = self.k.arange(device)
        if not self.pinned:
            return span
        return torch.cat((torch.tensor(self.pinned, device=device, dtype=span.dtype), span))

    def with_free(self, n: int, padding: Tensor | None = None) -> AttnMask:
        """The same mask with ``n`` more keys in front: always visible, or per ``padding``
        (b, n) bool, True = may attend."""
        held = self.free_padding
        if padding is not None or held is not None:
            b = (padding if padding is not None else held).shape[0]
            device = (padding if padding is not None else held).device
            new = padding if padding is not None else torch.ones(b, n, dtype=torch.bool)
            old = held if held is not None else torch.ones(b, self.free, dtype=torch.bool)
            padding = torch.cat((new.to(device), old.to(device)), dim=-1)
        return replace(self, free=self.free + n, free_padding=padding)

    def active_rules(self) -> list[MaskRule]:
        """The rules that hide at least one (query, key) pair of this call."""
        k = Span(min(self.pinned), self.k.stop) if self.pinned else self.k  # covers every key
        return [rule for rule in self.rules if not rule.hides_nothing(self.q, k)]

    def square_causal(self) -> bool:
        """Exactly causal over identical query and key positions, nothing else hidden.

        This is the one case where SDPA's top-left aligned ``is_causal`` is correct.
        """
        if self.key_padding is not None or self.user is not None or self.free or self.pinned:
            return False
        if self.q != self.k:
            return False
        active = self.active_rules()
        return bool(active) and all(rule.kind == "causal" for rule in active)

    def dense(self, device: torch.device | None = None) -> Tensor | None:
        """One bool mask broadcastable to (b, h, i, f + p), True = may attend; None = all allowed.

        Padding is (b, 1, 1, j); the rules alone give (i, j) (or (b, 1, i, j) for a rule that
        depends on the batch row); the user mask keeps its own leading dims.
        """
        if self.hides_nothing():  # e.g. a decode step: one query at the newest position
            return None
        rows = torch.arange(len(self.q), device=device)
        return self.block(rows, torch.arange(self.free + self.width, device=device))

    def hides_nothing(self) -> bool:
        """No padding, user mask or rule hides any (query, key) pair: no mask is needed."""
        if self.key_padding is not None or self.user is not None:
            return False
        return self.free_padding is None and not (self.rules and self.active_rules())

    def rules_allow(self, q_pos: Tensor, k_pos: Callable[[], Tensor]) -> Tensor | None:
        """Every active rule over query positions ``q_pos`` and the key positions ``k_pos()``
        (broadcastable, as :meth:`MaskRule.allows` takes them); None when no rule is active."""
        rules = self.active_rules() if self.rules else ()
        if not rules:
            return None
        keys = k_pos()
        grid = rules[0].allows(q_pos, keys)
        for rule in rules[1:]:
            grid = grid & rule.allows(q_pos, keys)
        return grid

    @property
    def width(self) -> int:
        """Number of positional keys (pinned and span)."""
        return len(self.pinned) + len(self.k)

    def block(self, rows: Tensor, cols: Tensor) -> Tensor | None:
        """The mask of query rows ``rows`` (r,) and key columns ``cols`` (c,) (indices over the
        f + p keys), broadcastable to (b, h, r, c); None = all allowed.

        :meth:`dense` is the block of every row and column; a blockwise kernel asks for the
        blocks it computes, so no (i, j) mask is formed.
        """
        pos = cols - self.free
        free = pos < 0  # free keys: always visible
        pos = pos.clamp(min=0)
        mask = None
        if self.key_padding is not None:
            mask = rearrange(self.key_padding.to(cols.device)[:, pos] | free, "b c -> b 1 1 c")
        if self.user is not None:
            user = _as_4d(self.user).to(cols.device)
            span = pos - len(self.pinned)  # user columns cover the span only
            user = user[..., user.shape[-1] - len(self.k) :][..., span.clamp(min=0)]
            user = user if user.shape[-2] == 1 else user[..., rows, :]
            user = user | (span < 0) | free
            mask = user if mask is None else mask & user
        q_pos = (self.q.start + rows).unsqueeze(-1)
        grid = self.rules_allow(q_pos, lambda: self.key_positions(cols.device)[pos].unsqueeze(0))
        if grid is not None:
            grid = grid | free
            mask = grid if mask is None else mask & grid
        if self.free_padding is not None:  # free keys hidden per row; positional ones visible
            columns = F.pad(self.free_padding, (0, self.width), value=True)
            columns = rearrange(columns.to(cols.device)[:, cols], "b c -> b 1 1 c")
            mask = columns if mask is None else mask & columns
        return mask


def _as_4d(mask: Tensor) -> Tensor:
    """(i, j) -> (1, 1, i, j); (h, i, j) -> (1, h, i, j) (per head, as in x-transformers);
    (b, h, i, j) unchanged."""
    if mask.ndim == 2:
        return rearrange(mask, "i j -> 1 1 i j")
    if mask.ndim == 3:
        return rearrange(mask, "h i j -> 1 h i j")
    return mask
