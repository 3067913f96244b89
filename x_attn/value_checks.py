"""Checks on the values a tensor holds that also hold under ``torch.compile``.

Eager mode raises a ValueError naming the argument, as everywhere else. Reading a tensor's
values into Python (``bool(t.all())``, ``int(t.max())``) is a graph break, and a data-dependent
branch under ``torch.compile(fullgraph=True)`` is an error, so while compiling the same
condition becomes an in-graph assertion (``torch._assert_async``): the compiled model raises a
RuntimeError with the same message instead of silently skipping the check.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def require_all(ok: Tensor, message: str, detail: Callable[[], str] | None = None) -> None:
    """Raise ValueError(message) unless every element of the bool tensor ``ok`` is True.

    ``detail`` (eager only) appends the offending values to the message; under
    ``torch.compile`` the message alone goes into the graph's assertion.
    """
    if torch.compiler.is_compiling():
        torch._assert_async(ok.all(), message)
        return
    if not bool(ok.all()):
        raise ValueError(message + (detail() if detail is not None else ""))


def require_ids_below(
    name: str, ids: Tensor, high: int, owner: str = "", message: str | None = None
) -> None:
    """Integer ``ids`` must lie in [0, high): a token id for an embedding of ``high`` rows.

    ``message`` replaces the default one (the offending min and max are appended). Eager mode
    reads the min and max in one reduction (``aminmax``) instead of comparing every id twice.
    """
    prefix = f"{owner}: " if owner else ""
    message = message or f"{prefix}'{name}' holds ids outside [0, {high})"
    if torch.compiler.is_compiling():
        torch._assert_async(((ids >= 0) & (ids < high)).all(), message)
        return
    if ids.numel() == 0:
        return
    low, top = (int(t) for t in torch.aminmax(ids))
    if low < 0 or top >= high:
        raise ValueError(f"{message}: min {low}, max {top}")
