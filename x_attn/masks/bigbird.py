"""BigBird block-sparse pattern (Zaheer et al., arXiv 2007.14062), the ITC variant, bidirectional.

Positions are cut into blocks of b (query block I = i // b, key block J = j // b, n_b blocks
for a sequence of n positions, the last one possibly short). A pair is allowed when

* ``|I - J| <= w // 2`` (a window of w blocks centred on the query's block), or
* I or J is a global block: the first ``ceil(g / 2)`` and the last ``g // 2`` blocks (g = 2:
  the first and the last block, as in the paper's ITC construction) attend to everything and
  are attended by everything, or
* J is one of the r random blocks R[I] of the query's block, drawn uniformly without
  replacement among the blocks that are neither in its window nor global (all of them when
  fewer remain).

The random table R depends only on (seed, layer, n_b): a generator seeded from them draws it,
so the same layer gives the same blocks in every call, in training and at eval (the official
implementation likewise fixes each layer's random blocks when it builds the graph; redrawing
them at inference was a bug in Hugging Face's port, transformers#23056). The pattern depends on
the sequence length (the last global block), which :meth:`BigBird.for_length` binds per call.
BigBird is an encoder pattern: a global block sees the future, so causal layers refuse it.

Shape legend: r rows (queries) of a group, c columns (keys) of a group.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from x_attn.masks.sparse import BlockPattern, Group
from x_attn.masks.spec import Span

SEED_MIX = (1_000_003, 10_007)  # mixes (seed, layer, n_b) into one generator seed


class BigBird(BlockPattern):
    """Window, global and random blocks over absolute positions (see the module docstring).

    Args:
        block: b, positions per block.
        window: w, window blocks (odd: the own block and (w - 1) / 2 on each side).
        globals_: g, global blocks (the first ceil(g / 2) and the last g // 2).
        random: r, random key blocks per query block.
        seed, layer: the random table's generator is seeded from them (and n_b).
        length: the sequence length n this rule is bound to (None: not bound yet).
    """

    slot_anchored: ClassVar[bool] = True

    def __init__(
        self,
        block: int,
        window: int = 3,
        globals_: int = 2,
        random: int = 3,
        seed: int = 0,
        layer: int = 0,
        length: int | None = None,
        tables: dict[int, Tensor] | None = None,
    ) -> None:
        self.block, self.window, self.globals, self.random = block, window, globals_, random
        self.seed, self.layer, self.length = seed, layer, length
        self._tables = {} if tables is None else tables  # n_b -> (n_b, r) table, shared

    def for_length(self, length: int) -> BigBird:
        if length == self.length:
            return self
        args = (self.block, self.window, self.globals, self.random, self.seed, self.layer)
        return BigBird(*args, length=length, tables=self._tables)

    @property
    def n_blocks(self) -> int:
        if self.length is None:
            raise AssertionError("BigBird: the rule is used before a call bound its length")
        return -(-self.length // self.block)

    def is_global(self, blocks: Tensor) -> Tensor:
        """Which of the block indices ``blocks`` are global."""
        front, back = -(-self.globals // 2), self.globals // 2
        return (blocks < front) | (blocks >= self.n_blocks - back)

    def table(self) -> Tensor:
        """(n_b, r) random key blocks of each query block (-1 = none left to draw)."""
        n = self.n_blocks
        if n not in self._tables:
            gen = torch.Generator().manual_seed(
                self.seed * SEED_MIX[0] + self.layer * SEED_MIX[1] + n
            )
            blocks = torch.arange(n)
            table = torch.full((n, self.random), -1, dtype=torch.long)
            for row in range(n):
                near = (blocks - row).abs() <= self.window // 2
                eligible = blocks[~near & ~self.is_global(blocks)]
                drawn = eligible[torch.randperm(len(eligible), generator=gen)[: self.random]]
                table[row, : len(drawn)] = drawn.sort().values
            self._tables[n] = table
        return self._tables[n]

    def allows(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        q_blk, k_blk = q_pos // self.block, k_pos // self.block
        near = (q_blk - k_blk).abs() <= self.window // 2
        spread = near | self.is_global(q_blk) | self.is_global(k_blk)
        if self.random == 0:
            return spread
        drawn = self.table().to(q_pos.device)[q_blk.clamp(0, self.n_blocks - 1)]
        return spread | (drawn == k_blk.unsqueeze(-1)).any(dim=-1)

    def hides_nothing(self, q: Span, k: Span) -> bool:
        if len(q) == 0 or len(k) == 0:
            return True
        q_blk = torch.arange(q.start // self.block, (q.stop - 1) // self.block + 1)
        k_blk = torch.arange(k.start // self.block, (k.stop - 1) // self.block + 1)
        grid = self.allows(q_blk.unsqueeze(-1) * self.block, k_blk * self.block)
        return bool(grid.all())

    def parts(self, q: Span, k: Span, causal: bool) -> list[list[Group]]:
        """One part: each query block with the key blocks it attends (all for a global one)."""
        keys = k.arange()
        starts = torch.arange(self.n_blocks) * self.block  # the first position of each block
        groups = []
        for blk in range(q.start // self.block, (q.stop - 1) // self.block + 1):
            lo, hi = blk * self.block, (blk + 1) * self.block
            rows = torch.arange(max(q.start, lo), min(q.stop, hi))
            needed = self.allows(torch.tensor([[lo]]), starts.unsqueeze(0))[0]  # key blocks
            cols = keys[needed[keys // self.block]]
            if causal:
                cols = cols[cols < rows[-1] + 1]
            groups.append(Group(rows, cols))
        return [groups]
