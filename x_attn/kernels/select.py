"""Choose the attention kernel from what the active features need, and say why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class KernelChoice:
    """The kernel an attention layer uses by default and the reason for it."""

    name: Literal["sdpa", "manual"]
    reason: str


def choose_kernel(
    flash: bool | None, needs_scores: list[str], owner: str = "Attention"
) -> KernelChoice:
    """Pick ``sdpa`` unless a feature needs the raw scores or ``flash=False`` forces manual.

    Args:
        flash: the ``attn_flash`` flag: None = automatic, True = fused required,
            False = manual path forced.
        needs_scores: flag names of active features that need logits or probabilities.

    Raises:
        ValueError: ``flash=True`` together with a feature that needs the scores.
    """
    if flash is False:
        return KernelChoice("manual", "attn_flash=False forces the manual softmax path")
    if needs_scores:
        names = ", ".join(needs_scores)
        if flash:
            raise ValueError(
                f"{owner}: attn_flash=True requires the fused SDPA kernel, but {names} "
                "need(s) the raw attention scores, which SDPA never exposes; remove "
                "attn_flash=True (the manual path is then chosen automatically) or drop "
                f"{names}"
            )
        return KernelChoice("manual", f"{names} need(s) the raw attention scores")
    return KernelChoice("sdpa", "no active feature needs the attention scores")
