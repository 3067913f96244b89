"""Which part of a wrapper's input is new for a cache: the two cache protocols.

* The explicit API: ``logits, cache = model(x, return_cache=True)``, then
  ``model(new_tokens, cache=cache, return_cache=True)`` with only the new tokens.
* The x-transformers protocol: ``logits, inter = model(x, return_intermediates=True)``, then
  ``model(x_longer, cache=inter)`` with the whole sequence so far; the model runs only the
  tokens after the ones the cache holds and returns their logits.

``input_not_include_cache`` (a call's, else the wrapper's) says which: True = only new
tokens, False = the whole sequence; unset, a :class:`KVCache` takes new tokens and
intermediates take the whole sequence.

A cache is a value: a forward leaves the cache it was given as it was and returns an updated
one, so one cache can be continued in several ways. A call with only new inputs must
therefore ask for the new cache (``return_cache=True`` or ``return_intermediates=True``);
otherwise a decoding loop written for a cache updated in place would put every token at the
same position. Other mistakes that would give wrong logits silently are refused too: a whole
sequence that does not start with the tokens the cache holds, or is no longer than them; and,
unset, the whole sequence given to a :class:`KVCache` (its first tokens are the cached ones).

Shape legend: b batch, n inputs given, t inputs the cache holds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from x_attn.cache import KVCache
from x_attn.cache.kv_cache import stale_loop_message
from x_attn.layers.stack import LayerIntermediates
from x_attn.validation_inputs import check_cache


def new_inputs(
    owner: str,
    cache: Any,
    x: Tensor,
    mask: Tensor | None,
    not_include: bool | None,
    num_layers: int,
    returns_cache: bool,
) -> tuple[KVCache | None, Tensor, Tensor | None]:
    """(the cache, the inputs it has not seen, their mask) for ``x`` (b, n, ...) given ``cache``.

    Args:
        owner: the wrapper, for messages.
        cache: None, a :class:`KVCache` or :class:`LayerIntermediates` holding one.
        x: token ids (b, n) or continuous inputs (b, n, d); ids are checked against the
            tokens the cache holds.
        mask: (b, n) padding of ``x`` or None.
        not_include: ``input_not_include_cache`` of the call (or the wrapper), or None.
        num_layers: cache entries of the stack (attention runs, then shifted runs).
        returns_cache: the call returns the updated cache (return_cache / intermediates).
    """
    if cache is None:
        return None, x, mask
    intermediates = isinstance(cache, LayerIntermediates)
    kv = cache.cache if intermediates else cache
    if intermediates and kv is None:
        raise ValueError(
            f"{owner}: the intermediates passed as 'cache' hold no KV cache (the model is not "
            "causal or cannot cache); pass return_intermediates=True on a causal model first"
        )
    check_cache(kv, num_layers, x.shape[0], owner)
    whole = (not not_include) if not_include is not None else intermediates
    held, t = kv.inputs.tokens, kv.inputs.count
    tokens = not x.is_floating_point()
    starts_with_held = (
        tokens and held is not None and x.shape[1] > t and torch.equal(x[:, :t], held)
    )
    if whole:
        _check_whole(owner, x, t, held if tokens else None)
        return kv, x[:, t:], None if mask is None else mask[:, t:]
    if not returns_cache:
        raise ValueError(
            stale_loop_message(owner, "return_cache=True (or return_intermediates=True)")
        )
    if not_include is None and t > 0 and starts_with_held:
        raise ValueError(
            f"{owner}: 'x' starts with the {t} tokens this KVCache already holds; with a "
            f"KVCache pass only the new tokens (x[:, {t}:]), or the whole sequence so far with "
            "input_not_include_cache=False (input_not_include_cache=True if x really repeats "
            "them)"
        )
    return kv, x, mask


def _check_whole(owner: str, x: Tensor, t: int, held: Tensor | None) -> None:
    """A whole sequence must be longer than, and start with, what the cache holds."""
    if x.shape[1] <= t:
        raise ValueError(
            f"{owner}: the cache holds {t} tokens and 'x' has {x.shape[1]}: with this cache 'x' "
            "is the whole sequence so far (x-transformers), so it must be longer; to pass only "
            "new tokens use input_not_include_cache=True"
        )
    if held is not None and not torch.equal(x[:, :t], held):
        raise ValueError(
            f"{owner}: 'x' does not continue the sequence the cache holds (its first {t} "
            "tokens differ from the cached ones); pass the sequence this cache was built "
            "from, or start without a cache"
        )


def new_positions(owner: str, kwargs: dict[str, Any], given: int, new: int) -> None:
    """Keep only the new inputs' part of ``kwargs['pos']`` when ``x`` was the whole sequence.

    ``pos`` ((given,) or (b, given)) describes ``x`` as passed (x-transformers computes the
    positions of the whole sequence); the stack sees only the ``new`` inputs that run.
    """
    pos = kwargs.get("pos")
    if given == new or not isinstance(pos, Tensor) or pos.ndim not in (1, 2):
        return
    if pos.shape[-1] != given:
        raise ValueError(
            f"{owner}: 'x' is the whole sequence so far ({given} inputs, of which the cache "
            f"holds {given - new}), so 'pos' must give the positions of all {given}, got shape "
            f"{tuple(pos.shape)}"
        )
    kwargs["pos"] = pos[..., given - new :]
