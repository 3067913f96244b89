"""Token shifting (x-transformers' ``shift_tokens``), exact under the KV cache and with mems.

A layer with ``shift_tokens = s`` splits its (normed) block input into ``len(amounts)`` chunks
of ``d // len(amounts)`` features (features past the last chunk stay in place) and moves chunk
``k`` by ``amounts[k]`` positions along the sequence: ``out[t] = in[t - a]``, zeros where
``t - a`` is outside the sequence. Amounts are ``0 .. s`` in a causal stack (each position also
sees the ``s`` previous tokens) and ``-s .. s`` otherwise. Padded positions enter as zeros.
The idea is RWKV's token shift (Peng et al., "RWKV: Reinventing RNNs for the Transformer Era",
arXiv 2305.13048), as generalised by x-transformers.

Padding between real positions (memory tokens in front of a left-padded row) would be read
as zeros where the row alone reads its neighbour, so the sequence wrappers refuse it
(``neighbour_flags``, as for Multi-Token Attention).

Decoding with a cache keeps, in a :class:`ShiftEntry`, the last ``s`` input rows each shifted
layer has seen, so the rows of a new token are those of a full forward. Transformer-XL memories
of a self-attention layer are shifted together with the segment (they are that layer's inputs;
with an empty cache, the first call shifts the mems in front of its rows).

Shape legend: b batch, n sequence, m memory length, s largest shift, d model dim.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from x_attn.cache.entry import CacheEntry
from x_attn.masks.spec import Span


def shift_amounts(s: int, causal: bool) -> tuple[int, ...]:
    """The chunk shifts of a layer with ``shift_tokens = s``."""
    return tuple(range(0 if causal else -s, s + 1))


class ShiftTokens(nn.Module):
    """Shift feature chunks of the rows ``x`` (b, n, d) by ``amounts`` positions."""

    def __init__(self, amounts: tuple[int, ...]) -> None:
        super().__init__()
        self.amounts = amounts
        self.past = max(max(amounts), 0)  # rows before the sequence a new row reads
        # it mixes neighbouring positions: a wrapper refuses padding between real ones
        self.neighbour_flags = ("shift_tokens",)

    def forward(self, x: Tensor, before: Tensor | None = None) -> Tensor:
        """Shift ``x`` (b, n, d); ``before`` (b, past, d) are the rows that precede it (zeros
        when None). Later rows than ``x`` are not known, so they read as zeros."""
        b, n, d = x.shape
        width = d // len(self.amounts)
        if before is None:
            before = x.new_zeros(b, self.past, d)
        rows = torch.cat((before, x), dim=1)  # (b, past + n, d)
        chunks = []
        for k, amount in enumerate(self.amounts):
            chunk = rows[..., k * width : (k + 1) * width]
            chunks.append(_shift(chunk, amount, self.past, n))
        chunks.append(x[..., len(self.amounts) * width :])
        return torch.cat(chunks, dim=-1)

    def new_entry(self) -> ShiftEntry:
        return ShiftEntry(self.past)

    def extra_repr(self) -> str:
        return f"amounts={self.amounts}"


def _shift(rows: Tensor, amount: int, past: int, n: int) -> Tensor:
    """Rows ``past .. past + n`` of ``rows`` (b, past + n, w), each taken ``amount`` earlier."""
    start = past - amount
    lo, hi = max(start, 0), min(start + n, rows.shape[1])
    if hi <= lo:
        return rows.new_zeros(rows.shape[0], n, rows.shape[2])
    taken = rows[:, lo:hi]
    pad = (0, 0, lo - start, start + n - hi)  # zeros before / after the rows that exist
    return nn.functional.pad(taken, pad)


class ShiftEntry(CacheEntry):
    """The last ``past`` input rows (b, past, d) of one shifted layer, between decoding calls.

    Not positional (it never slides: a new token always reads the rows just before it) and not
    an attention entry (it holds no keys).
    """

    kind = "shift"
    positional = False

    def __init__(self, past: int, rows: Tensor | None = None) -> None:
        self.past, self.rows = past, rows

    def before(self, x: Tensor) -> Tensor:
        """The rows preceding ``x`` (b, n, d): zeros on the first call."""
        if self.rows is None:
            return x.new_zeros(x.shape[0], self.past, x.shape[2])
        return self.rows

    def remember(self, before: Tensor, x: Tensor) -> None:
        """Keep the last ``past`` rows of ``before`` followed by ``x``."""
        self.rows = torch.cat((before, x), dim=1)[:, before.shape[1] + x.shape[1] - self.past :]

    @property
    def held(self) -> Span | None:
        return None

    @property
    def key_mask(self) -> Tensor | None:
        return None

    @property
    def batch(self) -> int | None:
        return None if self.rows is None else self.rows.shape[0]

    def select(self, index: Tensor) -> ShiftEntry:
        return ShiftEntry(self.past, None if self.rows is None else self.rows[index])
