"""The decoding loop of ``AutoregressiveWrapper.generate``: which stepper, then sample.

A stepper has ``first()`` (logits after the prompts) and ``step(token)`` (logits after one
more token). :func:`choose_stepper` picks one:

* ``static_cache=True``: :class:`x_attn.decode.generate.StaticStepper`, preallocated buffers,
  its prefill and step compiled with ``compile`` (or not);
* otherwise :class:`x_attn.wrappers.stepper.LogitStepper`, with the ordinary KV cache when
  ``cache_kv`` and the model can be cached (a looped net's cache holds one cache per run),
  else re-running the whole sequence each token.

:func:`sample_tokens` runs the loop. Shape legend: b batch, t generated tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from x_attn.decode.generate import Backend, StaticStepper, check_compile, static_stepper
from x_attn.wrappers.decoding import PromptBatch
from x_attn.wrappers.stepper import LogitStepper


def choose_stepper(
    wrapper: nn.Module,
    batch: PromptBatch,
    seq_len: int,
    kwargs: dict[str, Any],
    *,
    restrict: bool,
    cache_kv: bool,
    static_cache: bool,
    compile: Backend,
    return_intermediates: bool,
) -> LogitStepper | StaticStepper:
    """Check the decoding options together, then the stepper they ask for (see the module)."""
    owner = f"{type(wrapper).__name__}.generate"
    check_compile(compile, static_cache)
    cached = cache_kv and wrapper._cache_usable(stacklevel=4)
    if return_intermediates and static_cache:
        raise ValueError(
            f"{owner}: return_intermediates=True reads the ordinary KV cache; "
            "drop static_cache=True to get the intermediates"
        )
    if return_intermediates and not cached:
        raise ValueError(f"{owner}: return_intermediates=True needs the KV cache (cache_kv)")
    if getattr(wrapper.net, "looped", False):
        kwargs.setdefault("looped_inference", True)
    if static_cache:
        return static_stepper(wrapper, batch, seq_len, restrict, cache_kv, kwargs, compile)
    return LogitStepper(wrapper, batch, kwargs, cached, restrict)


def sample_tokens(stepper: LogitStepper | StaticStepper, sampler: Any, seq_len: int) -> Tensor:
    """Up to ``seq_len`` sampled tokens (b, t); stops early once every row emitted eos."""
    logits, generated = stepper.first(), []
    for step in range(seq_len):
        generated.append(sampler(logits))
        if sampler.finished or step == seq_len - 1:
            break
        logits = stepper.step(generated[-1])
    return torch.stack(generated, dim=1)
