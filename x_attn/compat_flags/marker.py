"""The marker for a required argument or a non-literal default (generated)."""

from __future__ import annotations

from typing import Any


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()
