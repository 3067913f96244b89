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

    def allows(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """(i, 1) query positions, (1, p) key positions -> (i, p) bool."""
        raise NotImplementedError

    def hides_nothing(self, q: Span, k: Span) -> bool:
        """True when the rule allows every (query, key) pair of these spans (no mask needed)."""
        return False


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
    """

    q: Span
    k: Span
    rules: tuple[MaskRule, ...] = ()
    key_padding: Tensor | None = None
    user: Tensor | None = None
    free: int = 0
    free_padding: Tensor | None = None

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
        return [rule for rule in self.rules if not rule.hides_nothing(self.q, self.k)]

    def square_causal(self) -> bool:
        """Exactly causal over identical query and key positions, nothing else hidden.

        This is the one case where SDPA's top-left aligned ``is_causal`` is correct.
        """
        if self.key_padding is not None or self.user is not None or self.free or self.q != self.k:
            return False
        active = self.active_rules()
        return bool(active) and all(rule.kind == "causal" for rule in active)

    def dense(self, device: torch.device | None = None) -> Tensor | None:
        """One bool mask broadcastable to (b, h, i, f + p), True = may attend; None = all allowed.

        Padding is (b, 1, 1, j); the rules alone give (i, j); the user mask keeps its own
        leading dims.
        """
        mask = None
        if self.key_padding is not None:
            mask = rearrange(self.key_padding, "b j -> b 1 1 j")
        if self.user is not None:
            user = _as_4d(self.user)
            user = user[..., user.shape[-1] - len(self.k) :]
            mask = user if mask is None else mask & user
        rules = self.active_rules() if self.rules else ()
        if rules:
            q_pos = self.q.arange(device).unsqueeze(-1)
            k_pos = self.k.arange(device).unsqueeze(0)
            grid = rules[0].allows(q_pos, k_pos)
            for rule in rules[1:]:
                grid = grid & rule.allows(q_pos, k_pos)
            mask = grid if mask is None else mask & grid
        if mask is not None and self.free:
            mask = F.pad(mask, (self.free, 0), value=True)
        if self.free_padding is not None:
            columns = F.pad(self.free_padding, (0, len(self.k)), value=True)
            columns = rearrange(columns, "b j -> b 1 1 j")
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
