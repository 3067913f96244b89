"""Sliding-window attention with dilation and global tokens (Longformer, arXiv 2004.05150).

Window size has one definition everywhere (rule, kernel, cache, docs): a causal query at
position t sees the keys t - s*d for s = 0 .. w-1 (itself and the w - 1 keys before it, the
Mistral convention; with dilation d only every d-th of them). A bidirectional window adds the
same reach forward (t + s*d). Global tokens attend to every key and every query attends to
them; causality, when the layer is causal, is a separate rule applied on top.

Global tokens are given as absolute positions at construction (``positions``, kept by the
ring-buffer cache) or per call as a (b, j) bool mask over the call's keys
(:meth:`SlidingWindow.with_global_tokens`, without a cache).

Shape legend: b batch, i queries, p keys.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from x_attn.masks.spec import MaskRule, Span


class SlidingWindow(MaskRule):
    """``|q - k| < w*d`` on the dilation grid (``k <= q`` side only when causal), or global.

    Args:
        size: w, the number of window keys per direction (the query itself included).
        dilation: d, the stride between window keys.
        causal: look back only (a bidirectional window looks both ways).
        positions: absolute positions of the global tokens given at construction.
        marked: per-call global tokens: (span, (b, j) bool over the keys of ``span``).
    """

    kind: ClassVar[str] = "window"
    takes_global_tokens: ClassVar[bool] = True

    def __init__(
        self,
        size: int,
        dilation: int = 1,
        causal: bool = True,
        positions: tuple[int, ...] = (),
        marked: tuple[Span, Tensor] | None = None,
    ) -> None:
        self.size, self.dilation, self.causal = size, dilation, causal
        self.positions, self.marked = tuple(sorted(set(positions))), marked

    @property
    def back(self) -> int:
        """How many positions before a query its window reaches."""
        return (self.size - 1) * self.dilation

    @property
    def forward(self) -> int:
        """How many positions after a query its window reaches (0 when causal)."""
        return 0 if self.causal else self.back

    @property
    def has_globals(self) -> bool:
        return bool(self.positions) or self.marked is not None

    def with_global_tokens(self, span: Span, marked: Tensor) -> SlidingWindow:
        return SlidingWindow(self.size, self.dilation, self.causal, self.positions, (span, marked))

    def global_marks(self, pos: Tensor) -> Tensor | None:
        """(b|1, p) bool: which of the absolute positions ``pos`` (p,) are global tokens."""
        marks = None
        if self.positions:
            fixed = torch.tensor(self.positions, device=pos.device, dtype=pos.dtype)
            marks = torch.isin(pos, fixed).unsqueeze(0)
        if self.marked is not None:
            span, marked = self.marked
            inside = (pos >= span.start) & (pos < span.stop)
            index = (pos - span.start).clamp(0, len(span) - 1)
            call = marked.to(pos.device)[:, index] & inside
            marks = call if marks is None else marks | call
        return marks

    def allows(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        dist = q_pos - k_pos
        near = (dist <= self.back) & (dist >= -self.forward)
        if self.dilation > 1:
            near = near & (dist % self.dilation == 0)
        if not self.has_globals:
            return near
        q_glob = self.global_marks(q_pos.reshape(-1))
        k_glob = self.global_marks(k_pos.reshape(-1))
        q_glob = q_glob.reshape(q_glob.shape[0], 1, *q_pos.shape)
        k_glob = k_glob.reshape(k_glob.shape[0], 1, *k_pos.shape)
        return near | q_glob | k_glob  # (b|1, 1, i, p)

    def hides_nothing(self, q: Span, k: Span) -> bool:
        if len(q) == 0 or len(k) == 0:
            return True
        back, ahead = q.stop - 1 - k.start, k.stop - 1 - q.start  # largest distances each way
        if self.dilation > 1:
            return back <= 0 and ahead <= 0  # one query and its own key
        return back <= self.back and ahead <= self.forward
