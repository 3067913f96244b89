"""Choose each layer's attention kernel from what its features need, and say why.

The candidates are the registered kernels (:data:`x_attn.kernels.registry.KERNELS`, in order of
preference); ``attn_flash=True`` keeps only fused ones, ``attn_flash=False`` only the others.
The first candidate that supports every need wins. A request no candidate can serve is refused
at construction, naming every flag involved. A need of an efficient path ("fast:<kind>": a
pattern computed without a dense (i, j) mask) is dropped only where no allowed kernel meets it
together with the other needs (attention maps, the manual path of ``attn_flash=False``, a
feature that needs the scores); the reason then says that a dense mask is formed, and for
which flags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from x_attn.kernels.registry import KERNELS, Kernel, Need, dense_fallback, describe


@dataclass(frozen=True)
class KernelChoice:
    """The kernel an attention layer uses by default, the reason, and its attention-map kernel.

    ``maps_kernel`` runs the calls that ask for attention maps (``return_attn=True``); it is
    None when no kernel could form the scores for this layer.
    """

    name: str
    reason: str
    kernel: Kernel | None = None
    maps_kernel: Kernel | None = None

    def for_call(self, return_attn: bool) -> Kernel:
        """The kernel of one call: the default one, or the scores-forming one for maps."""
        chosen = self.maps_kernel if return_attn else self.kernel
        if chosen is None:
            raise ValueError("return_attn=True: no attention kernel can form this layer's scores")
        return chosen


def choose_kernel(
    flash: bool | None,
    needs_scores: Sequence[str],
    owner: str = "Attention",
    needs: Sequence[Need] = (),
) -> KernelChoice:
    """Pick the first registered kernel that supports what the layer needs.

    Args:
        flash: the ``attn_flash`` flag: None = automatic, True = fused required,
            False = fused excluded (the manual path).
        needs_scores: flag names of active features that need logits or probabilities.
        needs: further requirements (mask rules, cache kinds), each with its flag.

    Raises:
        ValueError: no allowed kernel supports every need; the message names every flag.
    """
    wanted = [Need(flag, "scores") for flag in needs_scores] + list(needs)
    dense = [n for n in wanted if not dense_fallback(n.capability)]
    maps = _first(KERNELS, [*dense, Need("return_attn", "maps")])
    pool = [k for k in KERNELS if flash is None or k.fused == flash]
    kernel = _first(pool, wanted) or _first(pool, dense)
    if kernel is None:
        raise ValueError(_refusal(flash, dense, pool, owner))
    dropped = [n for n in wanted if not kernel.can(n.capability)]
    if flash is False and kernel.name == "manual":
        reason = "attn_flash=False forces the manual softmax path"
    else:
        reason = _reason(kernel, [n for n in wanted if n not in dropped])
    if dropped:
        reason += f" (a dense (i, j) mask for {', '.join(_flags(dropped))})"
    return KernelChoice(kernel.name, reason, kernel, maps)


def _reason(kernel: Kernel, wanted: Sequence[Need]) -> str:
    """The needs that ruled out the kernels before ``kernel``, or its default reason."""
    skipped = KERNELS[: KERNELS.index(kernel)]
    blockers = [n for n in wanted if any(not k.can(n.capability) for k in skipped)]
    blockers = [n for n in blockers if kernel.can(n.capability)]
    return _needs_text(blockers) if blockers else kernel.default_reason


def _flags(needs: Sequence[Need]) -> list[str]:
    """The flags of ``needs``, each once."""
    return list(dict.fromkeys(n.flag for n in needs))


def _first(kernels: Sequence[Kernel], wanted: Sequence[Need]) -> Kernel | None:
    return next((k for k in kernels if all(k.can(n.capability) for n in wanted)), None)


def _needs_text(needs: Sequence[Need]) -> str:
    """'a, b need(s) the raw attention scores; c need(s) ...' grouped by capability."""
    groups: dict[str, list[str]] = {}
    for need in needs:
        groups.setdefault(need.capability, []).append(need.flag)
    parts = [f"{', '.join(dict.fromkeys(f))} need(s) {describe(c)}" for c, f in groups.items()]
    return "; ".join(parts)


def _refusal(flash: bool | None, wanted: list[Need], pool: list[Kernel], owner: str) -> str:
    blockers = [n for n in wanted if not any(k.can(n.capability) for k in pool)] or wanted
    names = ", ".join(dict.fromkeys(n.flag for n in blockers))
    if flash:
        return (
            f"{owner}: attn_flash=True requires a fused kernel (SDPA), but "
            f"{_needs_text(blockers)}, which no fused kernel provides; remove attn_flash=True "
            f"(the manual path is then chosen automatically) or drop {names}"
        )
    every = ", ".join(dict.fromkeys(n.flag for n in wanted))
    forced = "attn_flash=False excludes the fused kernels, and " if flash is False else ""
    return (
        f"{owner}: {forced}no attention kernel supports {every} together "
        f"({_needs_text(wanted)}); drop one of {names}"
    )
