"""What a sequence wrapper has fed into a cache: its inputs, counted apart from the stack's rows.

The stack counts every row it has processed (memory tokens and Transformer-XL memories
included); a wrapper needs its own inputs: how many (where a sequence given whole continues),
which tokens (to refuse a sequence that does not continue the cache) and how many were real
per row (where absolute positions continue; padding takes no position).

Shape legend: b batch, t inputs so far, n new inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from x_attn.cache.grow import GrowBuffer, grow


@dataclass
class SeenInputs:
    """The inputs a wrapper has given a cache (a value: :meth:`extend` returns a new one).

    Attributes:
        count: inputs per row so far, pads included.
        tokens: (b, count) token ids, or None (continuous inputs are not kept).
        real: (b,) real inputs per row, or None when every input was real.
    """

    count: int = 0
    tokens: Tensor | None = None
    real: Tensor | None = None
    _buffer: GrowBuffer | None = field(default=None, repr=False)

    def real_before(self) -> Tensor | int:
        """Real inputs per row so far: where the next input's absolute position is."""
        return self.count if self.real is None else self.real

    def extend(self, tokens: Tensor | None, mask: Tensor | None, n: int) -> SeenInputs:
        """These inputs followed by ``n`` new ones (their ids or None, their padding)."""
        real = self.real
        if mask is not None or real is not None:
            b = mask.shape[0] if mask is not None else real.shape[0]
            base = real if real is not None else torch.full((b,), self.count, device=mask.device)
            real = base + (mask.sum(-1) if mask is not None else n)
        held, buffer = self.tokens, self._buffer
        if tokens is None or (held is None and self.count):
            held, buffer = None, None  # ids unknown for some inputs: keep none
        elif held is None:
            held = tokens
        else:
            held, buffer = grow(buffer, held, tokens, dim=-1)
        return SeenInputs(self.count + n, held, real, buffer)

    def select(self, index: Tensor) -> SeenInputs:
        """The rows ``index`` (own copies)."""
        tokens = None if self.tokens is None else self.tokens[index]
        real = None if self.real is None else self.real[index]
        return SeenInputs(self.count, tokens, real)
