"""A cross-attention layer's keys and values: the context, projected once.

Shape legend: b batch, j context length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from x_attn.cache.entry import CacheEntry, HeldKeys, KeyRows, Project
from x_attn.masks.spec import Span


@dataclass
class ContextEntry(CacheEntry):
    """The projected context (payload: a (k, v) tuple or one tensor), its padding (b, j) and
    its length.

    The context is projected at the first call; later calls reuse it. A call's own
    ``context_mask`` wins over the stored one (they are the same in generation).
    """

    payload: Any = None
    mask: Tensor | None = None
    length: int = 0

    kind = "context"
    positional = False

    @property
    def held(self) -> Span | None:
        return None if self.payload is None else Span(0, self.length)

    @property
    def key_mask(self) -> Tensor | None:
        return self.mask

    @property
    def batch(self) -> int | None:
        return None if self.payload is None else _parts(self.payload)[0].shape[0]

    def update(self, new: KeyRows, project: Project) -> HeldKeys:
        if self.payload is None:
            self.payload = project(new.x, new.positions)
            self.mask, self.length = new.mask, len(new.span)
        elif len(new.span) != self.length:
            raise ValueError(
                f"KV cache: this cross-attention layer holds a context of {self.length} "
                f"tokens, but the context given has {len(new.span)}; start a new cache for a "
                "new context"
            )
        mask = new.mask if new.mask is not None else self.mask
        return HeldKeys(self.payload, Span(0, self.length), mask)

    def select(self, index: Tensor) -> ContextEntry:
        payload = self.payload
        if payload is not None:
            payload = (
                payload[index] if isinstance(payload, Tensor) else tuple(t[index] for t in payload)
            )
        mask = None if self.mask is None else self.mask[index]
        return ContextEntry(payload, mask, self.length)


def _parts(payload: Any) -> tuple[Tensor, ...]:
    """A payload's tensors: a (k, v) tuple, or one tensor (a latent)."""
    return (payload,) if isinstance(payload, Tensor) else tuple(payload)
