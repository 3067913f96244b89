"""Small helpers shared by the whole package (one definition each)."""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

T = TypeVar("T")


def exists(value: Any) -> bool:
    """True when ``value`` is not None."""
    return value is not None


def default(value: T | None, fallback: T) -> T:
    """``value`` unless it is None, else ``fallback``."""
    return value if value is not None else fallback


def refuse_several(owner: str, flags: tuple[tuple[str, bool], ...], reason: str) -> list[str]:
    """The names of ``flags`` (name, on) that are on; a ValueError when there are several:
    "<owner>: a and b <reason>; choose one"."""
    on = [name for name, active in flags if active]
    if len(on) > 1:
        raise ValueError(f"{owner}: {' and '.join(on)} {reason}; choose one")
    return on


def check_positive_int(name: str, value: Any, owner: str) -> None:
    """Raise ValueError/TypeError naming ``name`` unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: '{name}' must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{owner}: '{name}' must be >= 1, got {value}")


def check_probability(name: str, value: Any, owner: str) -> None:
    """Raise ValueError naming ``name`` unless ``0 <= value < 1``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{owner}: '{name}' must be a float, got {type(value).__name__}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}: '{name}' must be in [0, 1), got {value}")


def check_nonnegative(name: str, value: Any, owner: str) -> None:
    """Raise TypeError/ValueError naming ``name`` unless ``value`` is a finite number >= 0."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{owner}: '{name}' must be a float, got {type(value).__name__}")
    if not 0.0 <= value < float("inf"):
        raise ValueError(f"{owner}: '{name}' must be a finite number >= 0, got {value}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype to reduce in: float32 for float16 / bfloat16 inputs, else ``dtype`` itself.

    Sums of squares and softmax normalisers overflow float16 past ~256 and lose bfloat16's
    few mantissa bits; the result is cast back to the input's dtype by the caller.
    """
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def unit_vectors(t: Tensor) -> Tensor:
    """``t / ||t||_2`` over the last axis, the norm taken in float32 for float16 / bfloat16
    (also under autocast, which leaves the norm in the input's dtype); in ``t``'s dtype."""
    return F.normalize(t.to(compute_dtype(t.dtype)), p=2, dim=-1).to(t.dtype)


def dropout_if_active(layer: torch.nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``, skipped (``x`` itself) where it would change nothing: in eval mode or at
    p = 0 (saves a module call per use on the decode path)."""
    return layer(x) if layer.training and layer.p > 0 else x
