"""Options read by one kind of sublayer, refused where the stack has no sublayer of that kind.

A stack's plan is its tuple of layer letters (``'a'`` self-attention, ``'c'`` cross-attention,
``'f'`` feed-forward; see :mod:`x_attn.layers.pattern`). An option a user set explicitly that
no sublayer of the plan reads would be silently ignored (``ff_glu=True`` with
``custom_layers=('a', 'a')``), so it is refused at construction naming the option and where
the plan came from. Options are matched by their routing prefix (:mod:`x_attn.routing`), so a
new ``attn_*`` / ``cross_attn_*`` / ``ff_*`` flag is covered without being listed here.
"""

from __future__ import annotations

from x_attn.config import LayersConfig

# routing prefix -> (the layers its options configure, the layer letters that read them)
PREFIX_READERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("cross_attn_", "cross-attention", ("c",)),
    ("attn_", "attention", ("a", "c")),  # attn_* options configure cross-attention too
    ("ff_", "feed-forward", ("f",)),
)
# stack flags (when True) read by one kind of layer only
FLAG_READERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cross_residual_attn": ("cross-attention", ("c",)),
}
_LETTER_NAMES = {"a": "self-attention", "c": "cross-attention", "f": "feed-forward"}


def describe_plan(types: tuple[str, ...], custom: bool) -> str:
    """How a message names the plan: ``custom_layers ('a', 'a') has`` / ``the layers (..) have``."""
    return f"custom_layers {types} has" if custom else f"the layers {types} have"


def _letters(letters: tuple[str, ...]) -> str:
    """``'f' (feed-forward)``, or ``'a' (self-attention) or 'c' (cross-attention)``."""
    return " or ".join(f"'{letter}' ({_LETTER_NAMES[letter]})" for letter in letters)


def _unread(config: LayersConfig, types: tuple[str, ...], explicit: set[str]):
    """(layers configured, letters reading them, option names) of options no layer reads."""
    found = [
        (what, letters, sorted(k for k in explicit if k.startswith(prefix)))
        for prefix, what, letters in PREFIX_READERS
    ]
    found += [
        (what, letters, [flag] if getattr(config, flag) else [])
        for flag, (what, letters) in FLAG_READERS.items()
    ]
    return [
        (w, letters, keys) for w, letters, keys in found if keys and not set(letters) & set(types)
    ]


def refuse_unread_options(
    config: LayersConfig, types: tuple[str, ...], owner: str, explicit: set[str]
) -> None:
    """ValueError naming the options the user set that no layer of ``types`` reads.

    Args:
        config: the stack's config.
        types: its layer letters.
        owner: the class name for the message.
        explicit: every keyword the user passed.
    """
    custom = config.custom_layers is not None
    for what, letters, keys in _unread(config, types, explicit):
        names = ", ".join(keys)
        one = len(keys) == 1
        fix = f"add '{letters[0]}' to custom_layers" if custom else "set cross_attend=True"
        raise ValueError(
            f"{owner}: {names} configure{'s' if one else ''} {what} layers, but "
            f"{describe_plan(types, custom)} no {_letters(letters)} layer, so "
            f"{'it' if one else 'they'} would be ignored; drop {names} or {fix}"
        )
