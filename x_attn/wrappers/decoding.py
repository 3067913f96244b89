"""Decoding helpers: prompt batching (left padding), the token sampler, keyword checks.

Shape legend: b batch, p prompt length, v vocabulary.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from x_attn.routing import unknown_argument
from x_attn.utils import exists
from x_attn.validation_inputs import token_ids
from x_attn.wrappers.sampling import resolve_filter, sample_next

# model inputs a sequence wrapper (TransformerWrapper, ...) passes on to its stack
SEQUENCE_INPUTS = frozenset({"context", "context_mask"})
# keywords the wrappers set themselves; a caller passing them would silently fight the loop
RESERVED_KWARGS = frozenset(
    "mask cache mems attn_mask seq_start_pos return_cache return_mems return_intermediates "
    "return_embeddings return_attn".split()
)


@dataclass
class PromptBatch:
    """Prompts as one left-padded batch.

    Attributes:
        tokens: (b, p) token ids, real tokens right-aligned.
        mask: (b, p) True = real token, or None when no row is padded.
        start: (b,) index of each row's first real token, or None when no row is padded.
        squeeze: the caller gave one 1-D prompt; return 1-D tokens.
    """

    tokens: Tensor
    mask: Tensor | None
    start: Tensor | None
    squeeze: bool = False


def check_causal_net(net: nn.Module, owner: str) -> None:
    """Next-token training needs self-attention that cannot see later tokens."""
    layers = getattr(net, "attn_layers", None)
    if layers is None or "a" not in getattr(layers, "types", ()) or layers.causal:
        return
    raise ValueError(
        f"{owner}: the {type(layers).__name__} of 'net' is not causal, so every position "
        "would see the tokens it is trained to predict (the loss falls by peeking at the "
        "future); build the net with a Decoder (or AttentionLayers(causal=True))"
    )


def _from_list(prompts: Sequence[Tensor], owner: str) -> tuple[Tensor, Tensor]:
    """List of 1-D prompts -> (b, n) right-padded tokens and (b,) lengths."""
    if len(prompts) == 0:
        raise ValueError(f"{owner}: 'prompts' is an empty list; pass at least one prompt")
    prompts = [token_ids(f"prompts[{i}]", p, owner) for i, p in enumerate(prompts)]
    for i, p in enumerate(prompts):
        if p.ndim != 1 or p.numel() == 0:
            raise ValueError(
                f"{owner}: 'prompts[{i}]' must be a non-empty 1-D tensor, got shape "
                f"{tuple(p.shape)}; every prompt needs at least one token"
            )
    lens = torch.tensor([p.numel() for p in prompts], device=prompts[0].device)
    tokens = torch.nn.utils.rnn.pad_sequence(list(prompts), batch_first=True)
    return tokens, lens


def _check_lens(prompt_lens: Any, b: int, n: int, owner: str) -> Tensor:
    prompt_lens = token_ids("prompt_lens", prompt_lens, owner)
    if prompt_lens.shape != (b,):
        raise ValueError(
            f"{owner}: 'prompt_lens' must have shape (batch={b},), got {tuple(prompt_lens.shape)}"
        )
    if bool(((prompt_lens < 1) | (prompt_lens > n)).any()):
        raise ValueError(
            f"{owner}: 'prompt_lens' must lie in [1, {n}] (the prompt width), got "
            f"{prompt_lens.tolist()}"
        )
    return prompt_lens


def prepare_prompts(
    prompts: Tensor | Sequence[Tensor], prompt_lens: Tensor | None, pad_value: int, owner: str
) -> PromptBatch:
    """Validate prompts and left-pad them into one batch.

    Args:
        prompts: (b, n) or (n,) token ids, or a list of 1-D prompts of any lengths.
        prompt_lens: (b,) real lengths of right-padded (b, n) prompts, or None.
        pad_value: token id written into the padding.
        owner: name used in error messages.
    """
    squeeze = False
    if isinstance(prompts, (list, tuple)):
        if prompt_lens is not None:
            raise ValueError(f"{owner}: give 'prompt_lens' only with a (batch, n) tensor")
        tokens, lens = _from_list(prompts, owner)
    else:
        prompts = token_ids("prompts", prompts, owner)
        if prompts.ndim == 1:
            prompts, squeeze = prompts.unsqueeze(0), True
        if prompts.ndim != 2 or prompts.shape[0] == 0 or prompts.shape[1] == 0:
            raise ValueError(
                f"{owner}: 'prompts' must have shape (batch, n) or (n,) with n >= 1, got "
                f"{tuple(prompts.shape)}"
            )
        tokens = prompts
        lens = None if prompt_lens is None else _check_lens(prompt_lens, *prompts.shape, owner)
    if lens is None or bool((lens == tokens.shape[1]).all()):
        return PromptBatch(tokens.long(), None, None, squeeze)
    n = tokens.shape[1]
    start = (n - lens).long()
    index = (torch.arange(n, device=tokens.device) - start.unsqueeze(-1)) % n
    mask = torch.arange(n, device=tokens.device) >= start.unsqueeze(-1)
    tokens = tokens.gather(1, index).masked_fill(~mask, pad_value)
    return PromptBatch(tokens.long(), mask, start, squeeze)


def _check_real(name: str, value: Any, owner: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{owner}: '{name}' must be a finite float, got {value!r}")


class TokenSampler:
    """Draws the next token of every row and tracks which rows have emitted ``eos_token``.

    Rows that are done keep receiving ``pad_value``.
    """

    def __init__(
        self,
        *,
        temperature: float,
        filter_logits_fn: str | Callable | None,
        filter_kwargs: dict | None,
        entmax_alpha: float | None,
        eos_token: int | None,
        pad_value: int,
        num_tokens: int | None,
        generator: torch.Generator | None,
        owner: str,
    ) -> None:
        _check_real("temperature", temperature, owner)
        if temperature < 0:
            raise ValueError(
                f"{owner}: 'temperature' must be >= 0, got {temperature}; use 0 for greedy decoding"
            )
        if entmax_alpha is not None:
            _check_real("entmax_alpha", entmax_alpha, owner)
            if entmax_alpha <= 1:
                raise ValueError(
                    f"{owner}: 'entmax_alpha' must be > 1 (1 would be softmax), got "
                    f"{entmax_alpha}; pass None for softmax sampling"
                )
        if filter_kwargs is not None and not isinstance(filter_kwargs, dict):
            raise TypeError(f"{owner}: 'filter_kwargs' must be a dict, got {filter_kwargs!r}")
        if eos_token is not None:
            vocab = num_tokens if exists(num_tokens) else math.inf
            if isinstance(eos_token, bool) or not isinstance(eos_token, int):
                raise TypeError(f"{owner}: 'eos_token' must be an int, got {eos_token!r}")
            if not 0 <= eos_token < vocab:
                raise ValueError(
                    f"{owner}: 'eos_token' must be a token id in [0, {vocab}), got {eos_token}"
                )
        self.filter_fn = resolve_filter(filter_logits_fn)
        self.temperature, self.filter_kwargs = float(temperature), filter_kwargs or {}
        self.entmax_alpha, self.generator = entmax_alpha, generator
        self.eos_token, self.pad_value = eos_token, pad_value
        self.done: Tensor | None = None

    def __call__(self, logits: Tensor) -> Tensor:
        """(b, v) last-position logits -> (b,) next tokens."""
        token = sample_next(
            logits,
            temperature=self.temperature,
            filter_fn=self.filter_fn,
            filter_kwargs=self.filter_kwargs,
            entmax_alpha=self.entmax_alpha,
            generator=self.generator,
        )
        if self.eos_token is None:
            return token
        if self.done is not None:
            token = token.masked_fill(self.done, self.pad_value)
            self.done = self.done | (token == self.eos_token)
        else:
            self.done = token == self.eos_token
        return token

    @property
    def finished(self) -> bool:
        """Every row has emitted ``eos_token``."""
        return self.done is not None and bool(self.done.all())


def check_passthrough(
    kwargs: dict,
    owner: str,
    net: nn.Module | None = None,
    own: Callable | None = None,
    extra: frozenset[str] = frozenset(),
) -> None:
    """Refuse keywords that the wrapper sets itself, and keywords ``net`` does not take.

    Args:
        kwargs: the extra keywords of the wrapper's method, passed on to ``net``.
        owner: the method, named in errors (e.g. ``AutoregressiveWrapper.generate``).
        net: the model they go to; None skips the unknown-keyword check.
        own: the wrapper's method, whose own keywords are suggested for a typo.
        extra: further inputs the wrapper's loop can feed a sequence wrapper (e.g. the
            prepended embeddings the autoregressive decoder handles).
    """
    bad = sorted(set(kwargs) & RESERVED_KWARGS)
    if bad:
        raise TypeError(
            f"{owner}: {bad} cannot be passed here, the wrapper sets them itself; pass only "
            "model inputs such as context / context_mask (prompts of different lengths: give "
            "a list or prompt_lens)"
        )
    accepted = None if net is None else model_inputs(net, extra)
    if accepted is None:
        return
    for key in kwargs:
        if key not in accepted:
            known = accepted | (set() if own is None else keyword_names(own))
            raise unknown_argument(owner, key, known)


def model_inputs(net: nn.Module, extra: frozenset[str] = frozenset()) -> set[str] | None:
    """Keywords ``net`` takes as model inputs during decoding; None when it cannot be told.

    A sequence wrapper takes ``context`` / ``context_mask``, plus the ``extra`` inputs the
    calling loop knows how to feed it step by step.
    """
    from x_attn.wrappers.sequence import SequenceWrapper

    if isinstance(net, SequenceWrapper):
        return set(SEQUENCE_INPUTS | extra)
    params = inspect.signature(net.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return keyword_names(net.forward) - RESERVED_KWARGS


def keyword_names(func: Callable) -> set[str]:
    """Names ``func`` accepts as keywords (not self, *args or **kwargs)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = inspect.signature(func).parameters.values()
    return {p.name for p in params if p.kind in kinds and p.name != "self"}


def make_sampler(net: nn.Module, pad_value: int, owner: str, **options: Any) -> TokenSampler:
    """A TokenSampler for ``net`` from generate()'s sampling options (checked here)."""
    return TokenSampler(
        pad_value=pad_value, num_tokens=getattr(net, "num_tokens", None), owner=owner, **options
    )


@contextmanager
def inference(net: nn.Module) -> Iterator[None]:
    """Eval mode and inference mode for the duration, then the caller's mode back."""
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        net.train(was_training)
