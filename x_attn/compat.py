"""x-transformers flags that x_attn does not implement yet: accepted when they change nothing.

The flags of x-transformers 2.31 and their defaults are data (:mod:`x_attn.compat_flags`,
generated from its signatures). A keyword that x_attn does not know but x-transformers does is

* accepted and dropped when its value is the x-transformers default (or another value that
  means "feature off" in both libraries), so code written for x-transformers that passes a flag
  at its off value runs unchanged;
* refused otherwise with :class:`UnsupportedFlagError`: "x-transformers flag 'X' is not
  supported by x_attn yet; see docs/compat.md", instead of a did-you-mean that would suggest
  an unrelated x_attn name.

``python scripts/compat_doc.py`` prints the list of docs/compat.md (kept in sync by a test).
"""

from __future__ import annotations

import inspect
from typing import Any

from x_attn.compat_flags import FLAGS, NO_DEFAULT, X_TRANSFORMERS_VERSION

__all__ = ["UnsupportedFlagError", "drop_unsupported", "is_unsupported_noop", "unsupported_flags"]

# x_attn class -> the x-transformers class whose flags it takes
_OWNER_ALIASES = {
    "Encoder": "AttentionLayers",
    "Decoder": "AttentionLayers",
    "CrossAttender": "AttentionLayers",
    "PrefixDecoder": "AttentionLayers",
}
# flags whose x-transformers default is not what x_attn does: the values that are no-ops here
NOOP_VALUES: dict[str, tuple[Any, ...]] = {
    # x_attn's cache always takes only the new tokens (x-transformers' True)
    "input_not_include_cache": (True,),
}


class UnsupportedFlagError(TypeError):
    """An x-transformers flag, at a value that changes the model, that x_attn lacks."""


def _key(owner: str, method: str) -> str:
    base = owner.split(".")[0]
    return f"{_OWNER_ALIASES.get(base, base)}.{method}"


def _same(value: Any, default: Any) -> bool:
    """``value`` equals the default, with bools, ints and floats kept apart from each other."""
    if default is NO_DEFAULT:
        return False
    if default is None or isinstance(default, bool):
        return value is default
    if isinstance(value, bool) or type(value) not in (type(default), int, float):
        return False
    return bool(value == default)


def is_unsupported_noop(owner: str, method: str, name: str, value: Any) -> bool:
    """Whether a keyword unknown to x_attn can be dropped (x-transformers flag at a no-op value).

    Args:
        owner: the x_attn class (e.g. "Decoder", "TransformerWrapper"), for lookup and messages.
        method: "__init__", "forward", "generate", ...
        name: the keyword.
        value: its value.

    Returns:
        True when ``name`` is an x-transformers flag of ``owner.method`` at a value that means
        "off" in both libraries; False when x-transformers has no such flag either.

    Raises:
        UnsupportedFlagError: an x-transformers flag at a value that would change the model.
    """
    flags = FLAGS.get(_key(owner, method), {})
    if name not in flags:
        return False
    accepted = NOOP_VALUES.get(name, (flags[name],))
    if any(_same(value, a) for a in accepted):
        return True
    suffix = "" if method == "__init__" else f".{method}"
    raise UnsupportedFlagError(
        f"{owner}{suffix}: x-transformers flag '{name}' is not supported by x_attn yet; see "
        "docs/compat.md"
    )


def drop_unsupported(owner: str, method: str, kwargs: dict[str, Any], known: set[str]) -> None:
    """Remove from ``kwargs`` (in place) the x-transformers flags x_attn lacks, at no-op values.

    Keys in ``known`` are left alone, as are keys x-transformers does not know either (the
    caller reports those with a did-you-mean). Raises UnsupportedFlagError for a lacking flag
    at a value that changes the model.
    """
    for name in [k for k in kwargs if k not in known]:
        if is_unsupported_noop(owner, method, name, kwargs[name]):
            del kwargs[name]


# ------------------------------------------------------------------------------------------------
# what x_attn accepts, for docs/compat.md


_TO_STACK = ("TransformerWrapper.forward", "ContinuousTransformerWrapper.forward")


def _x_attn_known(key: str) -> set[str]:
    """Keyword names x_attn accepts for the x-transformers ``key`` ("Class.method")."""
    import x_attn
    from x_attn.config import AttentionConfig, FeedForwardConfig
    from x_attn.routing import known_layer_arguments

    owner, method = key.split(".")
    if key == "AttentionLayers.__init__":
        return known_layer_arguments() | {"dim", "depth", "heads", "causal", "cross_attend"}
    configs = {"Attention.__init__": AttentionConfig, "FeedForward.__init__": FeedForwardConfig}
    cls = getattr(x_attn, owner, None)
    if cls is None or not hasattr(cls, method):
        return set()
    func = inspect.unwrap(getattr(cls, method))
    known = set(inspect.signature(func).parameters) - {"self"}
    if key in configs:
        known |= set(configs[key].__dataclass_fields__)
    if key in _TO_STACK:  # their **kwargs reach the stack's forward
        known |= _x_attn_known("AttentionLayers.forward") | {"seq_start_pos"}
    return known


def unsupported_flags() -> dict[str, list[str]]:
    """``{"Class.method": [flags x_attn lacks]}`` over every x-transformers signature recorded."""
    out = {}
    for key, flags in sorted(FLAGS.items()):
        missing = sorted(set(flags) - _x_attn_known(key))
        if missing:
            out[key] = missing
    return out


def _compact(names: list[str]) -> list[str]:
    """``attn_x`` and ``cross_attn_x`` both missing -> one entry ``(cross_)attn_x``."""
    listed = set(names)
    out = []
    for name in names:
        if name.startswith("cross_attn_") and name[len("cross_") :] in listed:
            continue
        both = name.startswith("attn_") and f"cross_{name}" in listed
        out.append(f"(cross_){name}" if both else name)
    return out


def markdown() -> str:
    """The generated list of docs/compat.md (``python scripts/compat_doc.py`` prints it)."""
    lines = [
        f"<!-- generated by scripts/compat_doc.py (x-transformers {X_TRANSFORMERS_VERSION}) -->"
    ]
    for key, names in unsupported_flags().items():
        lines.append(f"- `{key}`: " + ", ".join(f"`{n}`" for n in _compact(names)))
    lines.append("<!-- end generated -->")
    return "\n".join(lines)
