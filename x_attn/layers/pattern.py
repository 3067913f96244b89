"""The sequence of layer types of a stack (pure Python, no torch).

Letters: ``'a'`` self-attention, ``'c'`` cross-attention, ``'f'`` feed-forward.

- Default block per depth step: ``('a', 'f')``; with cross-attention ``('a', 'c', 'f')``;
  cross-attention only ``('c', 'f')``.
- Macaron: Lu et al., "Understanding and Improving Transformer From a Multi-Particle
  Dynamic System Point of View", arXiv 1906.02762: a half-step feed-forward on each side of
  the attention, ``('f', 'a', 'f')``; the caller scales those feed-forwards by 0.5
  (see :func:`macaron_ff_scale`).
- Sandwich: Press et al., "Improving Transformer Models by Reordering their Sublayers",
  arXiv 1911.03864: ``k`` attentions first and ``k`` feed-forwards last,
  ``('a',) * k + ('a', 'f') * (depth - k) + ('f',) * k``.
"""

from __future__ import annotations

from x_attn.utils import check_positive_int

LAYER_LETTERS: tuple[str, ...] = ("a", "c", "f")
_OWNER = "layer_types"


def _check_custom(custom_layers: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(custom_layers, str) or not isinstance(custom_layers, (tuple, list)):
        raise TypeError(
            f"{_OWNER}: 'custom_layers' must be a tuple of letters such as ('a', 'f'), "
            f"got {type(custom_layers).__name__} {custom_layers!r}"
        )
    if len(custom_layers) == 0:
        raise ValueError(f"{_OWNER}: 'custom_layers' is empty; give at least one layer letter")
    for position, letter in enumerate(custom_layers):
        if letter not in LAYER_LETTERS:
            raise ValueError(
                f"{_OWNER}: 'custom_layers' has unknown layer {letter!r} at position {position}; "
                "use 'a' (self-attention), 'c' (cross-attention) or 'f' (feed-forward)"
            )
    return tuple(custom_layers)


def _base_block(cross_attend: bool, only_cross: bool, macaron: bool) -> tuple[str, ...]:
    if only_cross:
        attn: tuple[str, ...] = ("c",)
    elif cross_attend:
        attn = ("a", "c")
    else:
        attn = ("a",)
    return ("f", *attn, "f") if macaron else (*attn, "f")


def _sandwich(depth: int, coef: int, cross_attend: bool, only_cross: bool, macaron: bool):
    if isinstance(coef, bool) or not isinstance(coef, int):
        raise TypeError(f"{_OWNER}: 'sandwich_coef' must be an int, got {type(coef).__name__}")
    if not 1 <= coef <= depth:
        raise ValueError(
            f"{_OWNER}: 'sandwich_coef' must be in [1, depth={depth}], got {coef}; "
            "use None for no sandwich"
        )
    if macaron:
        raise ValueError(
            f"{_OWNER}: 'sandwich_coef' and 'macaron' both reorder the sublayers; choose one"
        )
    if cross_attend or only_cross:
        raise ValueError(
            f"{_OWNER}: 'sandwich_coef' orders self-attention and feed-forward layers only; "
            "it cannot place cross-attention (drop 'cross_attend'/'only_cross' or use "
            "'custom_layers')"
        )
    return ("a",) * coef + ("a", "f") * (depth - coef) + ("f",) * coef


def layer_types(
    depth: int,
    *,
    cross_attend: bool = False,
    only_cross: bool = False,
    macaron: bool = False,
    sandwich_coef: int | None = None,
    custom_layers: tuple[str, ...] | None = None,
) -> tuple[str, ...]:
    """The layer letters of a stack, in order.

    Args:
        depth: number of blocks (>= 1).
        cross_attend: add a cross-attention after each self-attention.
        only_cross: cross-attention instead of self-attention (implies cross-attending).
        macaron: feed-forward before and after the attention of every block.
        sandwich_coef: sandwich reordering with ``k = sandwich_coef``, 1 <= k <= depth.
        custom_layers: an explicit tuple of letters, returned as given.

    Returns:
        A tuple of ``'a'``/``'c'``/``'f'`` letters.

    Raises:
        ValueError: bad depth, bad letter, out-of-range or incompatible ``sandwich_coef``,
            ``custom_layers`` combined with ``macaron`` or ``sandwich_coef``.
    """
    check_positive_int("depth", depth, _OWNER)
    if custom_layers is not None:
        for flag, value in (("macaron", macaron), ("sandwich_coef", sandwich_coef)):
            if value not in (None, False):
                raise ValueError(
                    f"{_OWNER}: 'custom_layers' fixes the layer order, so '{flag}' would be "
                    f"ignored; drop '{flag}' or write its pattern into 'custom_layers'"
                )
        return _check_custom(custom_layers)
    if sandwich_coef is not None:
        return _sandwich(depth, sandwich_coef, cross_attend, only_cross, macaron)
    return _base_block(cross_attend, only_cross, macaron) * depth


def macaron_ff_scale(types: tuple[str, ...], macaron: bool) -> tuple[float, ...]:
    """Residual scale of each layer: 0.5 for feed-forwards of a macaron stack, else 1.0.

    Args:
        types: layer letters, as returned by :func:`layer_types`.
        macaron: whether the stack is macaron.

    Returns:
        One float per layer.
    """
    for position, letter in enumerate(types):
        if letter not in LAYER_LETTERS:
            raise ValueError(
                f"macaron_ff_scale: unknown layer {letter!r} at position {position}; "
                "use 'a', 'c' or 'f'"
            )
    return tuple(0.5 if macaron and letter == "f" else 1.0 for letter in types)
