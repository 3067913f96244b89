"""matplotlib, imported on demand with a clear message when it is not installed."""

from __future__ import annotations

from types import ModuleType

INSTALL_HINT = "pip install 'x-attn[viz]'"


def pyplot() -> ModuleType:
    """``matplotlib.pyplot``; ImportError naming the extra to install when it is missing."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            f"x_attn.viz draws with matplotlib, which is not installed: {INSTALL_HINT}"
        ) from None
    return plt
