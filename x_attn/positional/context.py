"""Per-forward positional context shared by every layer of a stack.

The stack computes positional tables once per forward (rotary angles, the T5 / ALiBi bias,
position-infused sinusoids) for absolute positions and hands them to each attention layer.
Queries are always the last ``q_len`` positions of the positional keys (a KV cache or
Transformer-XL memories supply the earlier ones).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class PositionContext:
    """Positional tables for one forward.

    Attributes:
        q_len: number of queries (the newest positions).
        k_len: number of keys that carry a position (cache + memories + current tokens).
        rotary: (k_len, r/2) rotary angles or None.
        bias: (h, q_len, k_len) additive logit bias (T5 / ALiBi) or None.
        infused: (k_len, d) sinusoids added to query/key inputs (position-infused attention).
    """

    q_len: int
    k_len: int
    rotary: Tensor | None = None
    bias: Tensor | None = None
    infused: Tensor | None = None
