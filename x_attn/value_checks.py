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


def require_ids_below(name: str, ids: Tensor, high: int, owner: str = "") -> None:
    """Integer ``ids`` must lie in [0, high): a token id for an embedding of ``high`` rows."""
    prefix = f"{owner}: " if owner else ""
    require_all(
        (ids >= 0) & (ids < high),
        f"{prefix}'{name}' holds ids outside [0, {high})",
        lambda: f": min {int(ids.min())}, max {int(ids.max())}",
    )
