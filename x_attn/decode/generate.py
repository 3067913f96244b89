"""``generate(..., static_cache=True, compile=...)``: the loop around a :class:`StaticDecoder`.

:class:`StaticStepper` has the ``first`` / ``step`` interface of the ordinary
:class:`x_attn.wrappers.stepper.LogitStepper`, so sampling, eos handling and the returned
tokens are the same code. Decoders are kept per AutoregressiveWrapper, one per (rows,
slots, window, dtype, device, compile backend): a second generate call of the same shape
reuses the compiled prefill and step (no new trace). They are held outside the model (freed
with the wrapper, or by :func:`release_static_decoders`).

Slots: a generation of ``seq_len`` tokens after a prompt of p feeds ``p + seq_len - 1``
positions; the buffers hold that many rounded up to a multiple of ``max_seq_len``, so calls of
different lengths share one decoder (and one compiled step) while they fit.

Shape legend: b batch, p prompt length, v vocabulary.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from x_attn.decode.static import StaticDecoder
from x_attn.decode.support import OWNER, check_generate_options, check_wrapper
from x_attn.value_checks import require_all
from x_attn.wrappers.decoding import PromptBatch

Backend = bool | str | Callable
# Compiled decode steps after a call's first one skip dynamo's guard evaluation (see
# StaticStepper.step); set False to evaluate every guard on every step.
SKIP_GUARDS = True
# decoders (buffers, compiled functions) per AutoregressiveWrapper, outside the module so that
# copying or pickling a model never meets them; dropped with the wrapper
_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def release_static_decoders(wrapper: nn.Module) -> None:
    """Free the buffers (and compiled steps) that static generation keeps for ``wrapper``."""
    _DECODERS.pop(wrapper, None)


def check_compile(compile: Any, static_cache: bool) -> None:
    """``compile``: False, True (inductor), a backend name or a backend callable."""
    if compile is False:
        return
    if not static_cache:
        raise ValueError(
            "compile=True compiles the static decode step; pass static_cache=True as well "
            "(the ordinary cache changes shapes every token)"
        )
    if not (compile is True or isinstance(compile, str) or callable(compile)):
        raise TypeError(
            f"'compile' must be True/False, a torch.compile backend name (e.g. 'inductor', "
            f"'aot_eager') or a backend callable, got {compile!r}"
        )


def static_stepper(
    wrapper: nn.Module,
    batch: PromptBatch,
    seq_len: int,
    restrict: bool,
    cache_kv: bool,
    kwargs: dict[str, Any],
    compile: Backend,
) -> StaticStepper:
    """Check the model and options (once per call), then a stepper over a cached decoder."""
    check_generate_options(cache_kv, kwargs)
    net = wrapper.net
    check_wrapper(net)
    tokens = batch.tokens
    require_all(
        (tokens >= 0) & (tokens < net.num_tokens),
        f"{OWNER}: 'prompts' hold token ids outside [0, num_tokens={net.num_tokens})",
    )
    rows, need = tokens.shape[0], tokens.shape[1] + seq_len - 1
    limit = net.max_seq_len
    length = limit * -(-need // limit)
    window = wrapper._window if restrict else None
    weight = net.token_emb.weight
    key = (rows, length, window, weight.dtype, weight.device, compile)
    store = _DECODERS.setdefault(wrapper, {})
    if key not in store:
        store[key] = _CompiledDecoder(
            StaticDecoder(net, rows, length, window, weight.dtype, weight.device), compile
        )
    return StaticStepper(store[key], batch)


class _CompiledDecoder:
    """A decoder with its prefill and step, compiled (fullgraph, static shapes) or not."""

    def __init__(self, decoder: StaticDecoder, compile: Backend) -> None:
        self.decoder, self.compiled = decoder, compile is not False
        self.prefill, self.step = decoder.prefill, decoder.step
        if self.compiled:
            backend = "inductor" if compile is True else compile
            options = dict(fullgraph=True, dynamic=False, backend=backend)
            self.prefill = torch.compile(decoder.prefill, **options)
            self.step = torch.compile(decoder.step, **options)


class StaticStepper:
    """``first()`` logits after the prompts, then ``step(token)`` logits, one slot a token."""

    def __init__(self, compiled: _CompiledDecoder, batch: PromptBatch) -> None:
        self.compiled, self.tokens = compiled, batch.tokens
        rows, p = batch.tokens.shape
        device = batch.tokens.device
        self.start = batch.start if batch.start is not None else torch.zeros(rows, device=device)
        self.start = self.start.long()
        self.pos = torch.tensor(p, device=device)
        self.checked = not compiled.compiled  # the first compiled step runs every guard

    def first(self) -> Tensor:
        """(b, v) logits of the last prompt position."""
        return self.compiled.prefill(self.tokens, self.start)

    def step(self, token: Tensor) -> Tensor:
        """Feed ``token`` (b,) at the next slot; (b, v) logits of that slot."""
        args = token.unsqueeze(-1), self.pos, self.start
        self.pos = self.pos + 1
        if not (self.checked and SKIP_GUARDS):
            self.checked = True
            return self.compiled.step(*args)
        # Later steps of this call: same decoder, same shapes, dtypes and devices as the first
        # (only tensor values change), so dynamo's guards, which the first step evaluated in
        # full, are skipped (they cost ~0.5 ms a token on a 6-layer model; see
        # benchmarks/README.md "Static cache").
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
            return self.compiled.step(*args)
