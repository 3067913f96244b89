"""Causal masking: a query attends to keys at its own position or before (``k_pos <= q_pos``).

With the queries being the newest positions of the keys this is the bottom-right alignment
used everywhere in x_attn: with a cache, query t at absolute position p0 + t sees every cached
key. A single query at the newest position hides nothing, so a decode step builds no mask.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from x_attn.masks.spec import MaskRule, Span


class Causal(MaskRule):
    """``k_pos <= q_pos``."""

    kind: ClassVar[str] = "causal"

    def allows(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        return k_pos <= q_pos

    def hides_nothing(self, q: Span, k: Span) -> bool:
        return k.stop - 1 <= q.start


CAUSAL = Causal()
