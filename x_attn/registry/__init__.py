"""The registry of flags: one entry per flag, with a tiny example setting and its paper.

Property tests (causality, masking, SDPA vs manual, cache == full forward, mems == full
context, state_dict round trip) iterate over this registry, so a new flag is covered by every
invariant as soon as it is registered here. The README flag table lists the same entries.

An entry is a :class:`FlagCase` (:mod:`x_attn.registry.case`). The entries live by family, in
the order :data:`FLAGS` lists them: :mod:`.positional`, :mod:`.attention` (attention
variants), :mod:`.efficient`, :mod:`.core` (basic block options), :mod:`.structure` (norms,
residuals, layer order), :mod:`.feedforward`, :mod:`.wrapper` (TransformerWrapper options). A
new flag goes at the end of its family's tuple.
"""

from __future__ import annotations

from x_attn.registry.attention import ATTENTION
from x_attn.registry.case import FlagCase
from x_attn.registry.core import CORE
from x_attn.registry.efficient import EFFICIENT
from x_attn.registry.feedforward import FEEDFORWARD
from x_attn.registry.positional import POSITIONAL
from x_attn.registry.structure import STRUCTURE
from x_attn.registry.wrapper import WRAPPER

__all__ = ["FLAGS", "FlagCase", "flag_case"]

FLAGS: tuple[FlagCase, ...] = (
    FlagCase("default", "pre-norm softmax attention on SDPA"),
    *POSITIONAL,
    *ATTENTION,
    *EFFICIENT,
    *CORE,
    *STRUCTURE,
    *FEEDFORWARD,
    *WRAPPER,
)


def flag_case(name: str) -> FlagCase:
    """The registry entry called ``name``."""
    for case in FLAGS:
        if case.name == name:
            return case
    raise KeyError(f"no flag case named {name!r}")
