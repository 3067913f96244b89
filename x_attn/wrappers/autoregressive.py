"""Autoregressive training (next-token loss) and generation with a KV cache.

Sampling filters (top-k, top-p, min-p, top-a) and entmax sampling ("Sparse Text Generation",
Martins et al., arXiv 2004.02644) live in :mod:`x_attn.wrappers.sampling`; this module runs
the decoding loop around them.

Generation semantics:
    * prompts of different lengths are left-padded and masked (padding keys are never
      attended); absolute positions count from each row's first real token
      (``seq_start_pos``), relative schemes are shift-invariant;
    * past ``max_seq_len`` (relative positions only) every layer attends to the newest
      ``max_seq_len`` positions, a sliding window; the cached path evicts the oldest keys,
      the uncached path applies the same band mask over the whole sequence, so both give the
      same tokens;
    * a model whose parts cannot be cached (a submodule's ``uncacheable_reason``) falls back
      to the uncached path with a one-time warning.

Shape legend: b batch, n sequence, p prompt length, t generated tokens, v vocabulary,
m memory tokens.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from x_attn.utils import check_positive_int, exists
from x_attn.wrappers.sampling import resolve_filter, sample_next

__all__ = ["AutoregressiveWrapper", "PromptBatch", "TokenSampler", "prepare_prompts"]

_RELATIVE_HINT = (
    "; use relative positions (rotary_pos_emb=True, rel_pos_bias=True or alibi_pos_bias=True "
    "on the Decoder) to generate past max_seq_len with a sliding window"
)
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


def _check_token_tensor(name: str, t: Any, owner: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{owner}: '{name}' must be a tensor of token ids, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{owner}: '{name}' must hold integer token ids, got {t.dtype}")


def _from_list(prompts: Sequence[Tensor], owner: str) -> tuple[Tensor, Tensor]:
    """List of 1-D prompts -> (b, n) right-padded tokens and (b,) lengths."""
    if len(prompts) == 0:
        raise ValueError(f"{owner}: 'prompts' is an empty list; pass at least one prompt")
    for i, p in enumerate(prompts):
        _check_token_tensor(f"prompts[{i}]", p, owner)
        if p.ndim != 1 or p.numel() == 0:
            raise ValueError(
                f"{owner}: 'prompts[{i}]' must be a non-empty 1-D tensor, got shape "
                f"{tuple(p.shape)}; every prompt needs at least one token"
            )
    lens = torch.tensor([p.numel() for p in prompts], device=prompts[0].device)
    tokens = torch.nn.utils.rnn.pad_sequence(list(prompts), batch_first=True)
    return tokens, lens


def _check_lens(prompt_lens: Any, b: int, n: int, owner: str) -> Tensor:
    _check_token_tensor("prompt_lens", prompt_lens, owner)
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
        _check_token_tensor("prompts", prompts, owner)
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


def check_passthrough(kwargs: dict, owner: str) -> None:
    """Refuse keywords that the wrapper sets itself."""
    bad = sorted(set(kwargs) & RESERVED_KWARGS)
    if bad:
        raise TypeError(
            f"{owner}: {bad} cannot be passed here, the wrapper sets them itself; pass only "
            "model inputs such as context / context_mask (prompts of different lengths: give "
            "a list or prompt_lens)"
        )


def uncacheable_reason(net: nn.Module) -> str | None:
    """The first ``uncacheable_reason`` a submodule of ``net`` declares, or None."""
    if not hasattr(net, "attn_layers"):
        return f"{type(net).__name__} has no attention stack (attn_layers) to cache"
    for module in net.modules():
        reason = getattr(module, "uncacheable_reason", None)
        if isinstance(reason, str):
            return reason
    return None


class AutoregressiveWrapper(nn.Module):
    """Next-token training and sampling around a token model (TransformerWrapper + Decoder).

    Args:
        net: the model; called as ``net(tokens, **kwargs) -> logits (b, n, v)``.
        ignore_index: target id excluded from the loss.
        pad_value: token id of left padding and of positions after ``eos_token``.
    """

    def __init__(self, net: nn.Module, ignore_index: int = -100, pad_value: int = 0) -> None:
        super().__init__()
        owner = type(self).__name__
        if not isinstance(net, nn.Module) or not hasattr(net, "max_seq_len"):
            raise TypeError(
                f"{owner}: 'net' must be a token model with max_seq_len (e.g. "
                f"TransformerWrapper(attn_layers=Decoder(...))), got {type(net).__name__}"
            )
        for name, value in (("ignore_index", ignore_index), ("pad_value", pad_value)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{owner}: '{name}' must be an int, got {value!r}")
        vocab = getattr(net, "num_tokens", None)
        if exists(vocab) and not 0 <= pad_value < vocab:
            raise ValueError(
                f"{owner}: 'pad_value' must be a token id in [0, {vocab}), got {pad_value}"
            )
        self.net, self.ignore_index, self.pad_value = net, ignore_index, pad_value
        self._warned = False

    @property
    def max_seq_len(self) -> int:
        return self.net.max_seq_len

    @property
    def uncacheable_reason(self) -> str | None:
        """Why generation cannot use the KV cache with this model, or None."""
        return uncacheable_reason(self.net)

    @property
    def cacheable(self) -> bool:
        """True when generation can decode with the KV cache."""
        return self.uncacheable_reason is None

    def forward(self, x: Tensor, **kwargs: Any) -> Tensor:
        """Mean next-token cross-entropy of ``x`` (b, n), n >= 2; kwargs go to ``net``.

        A (b, n) ``mask`` is cut to the n - 1 inputs.
        """
        owner = f"{type(self).__name__}.forward"
        _check_token_tensor("x", x, owner)
        if x.ndim != 2 or x.shape[1] < 2:
            raise ValueError(f"{owner}: 'x' must have shape (batch, n >= 2), got {tuple(x.shape)}")
        inp, target = x[:, :-1], x[:, 1:]
        mask = kwargs.get("mask")
        if isinstance(mask, Tensor) and mask.ndim == 2 and mask.shape[1] == x.shape[1]:
            kwargs["mask"] = mask[:, :-1]
        logits = self.net(inp, **kwargs)
        return F.cross_entropy(
            rearrange(logits, "b n v -> b v n"), target, ignore_index=self.ignore_index
        )

    def generate(
        self,
        prompts: Tensor | Sequence[Tensor],
        seq_len: int,
        eos_token: int | None = None,
        temperature: float = 1.0,
        filter_logits_fn: str | Callable | None = "top_k",
        filter_kwargs: dict | None = None,
        entmax_alpha: float | None = None,
        cache_kv: bool = True,
        prompt_lens: Tensor | None = None,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Sample ``seq_len`` tokens after each prompt.

        Args:
            prompts: (b, p) or (p,) token ids, or a list of 1-D prompts of different lengths.
            seq_len: tokens to generate (>= 1).
            eos_token: a row stops at this token; later positions hold ``pad_value``, and the
                loop ends early once every row has stopped.
            temperature: 0 = greedy (no filter); otherwise logits / temperature.
            filter_logits_fn: "top_k", "top_p", "min_p", "top_a", a callable or None.
            filter_kwargs: keywords of the filter (e.g. ``{"k": 5}``, ``{"thres": 0.9}``).
            entmax_alpha: sample from alpha-entmax (> 1) instead of softmax (arXiv 2004.02644).
            cache_kv: decode with the KV cache (same tokens as without, faster).
            prompt_lens: (b,) real lengths when a (b, p) tensor holds right-padded prompts.
            generator: torch random generator for reproducible sampling.
            **kwargs: model inputs such as ``context`` / ``context_mask`` (cross-attention).

        Returns:
            (b, t) generated tokens (prompts excluded), t <= seq_len; (t,) for a 1-D prompt.
        """
        owner = f"{type(self).__name__}.generate"
        batch = prepare_prompts(prompts, prompt_lens, self.pad_value, owner)
        check_positive_int("seq_len", seq_len, owner)
        sampler = TokenSampler(
            temperature=temperature,
            filter_logits_fn=filter_logits_fn,
            filter_kwargs=filter_kwargs,
            entmax_alpha=entmax_alpha,
            eos_token=eos_token,
            pad_value=self.pad_value,
            num_tokens=getattr(self.net, "num_tokens", None),
            generator=generator,
            owner=owner,
        )
        check_passthrough(kwargs, owner)
        self._check_length(batch.tokens.shape[1], seq_len, owner)
        decode = self._decode_cached if cache_kv and self._cache_usable() else self._decode_full
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.inference_mode():
                out = decode(batch, seq_len, sampler, kwargs)
        finally:
            self.net.train(was_training)
        return out[0] if batch.squeeze else out

    def _check_length(self, p: int, seq_len: int, owner: str) -> None:
        """Learned absolute positions cap the positions fed to the model at max_seq_len."""
        if not getattr(self.net, "has_abs_positions", False):
            return
        limit = self.max_seq_len
        if p > limit:
            raise ValueError(
                f"{owner}: the prompt has {p} tokens but the model takes at most "
                f"max_seq_len={limit} with learned absolute positions{_RELATIVE_HINT}"
            )
        if p + seq_len - 1 > limit:
            raise ValueError(
                f"{owner}: prompt length {p} + seq_len {seq_len} needs {p + seq_len - 1} "
                f"positions, beyond max_seq_len={limit} of the learned absolute positions; "
                f"lower seq_len to at most {limit - p + 1}{_RELATIVE_HINT}"
            )

    def _cache_usable(self) -> bool:
        reason = self.uncacheable_reason
        if reason is None:
            return True
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"{type(self).__name__}: generating without the KV cache because {reason}; "
                "the tokens are the same, only slower (pass cache_kv=False to silence this)",
                RuntimeWarning,
                stacklevel=3,
            )
        return False

    @property
    def _window(self) -> int:
        """Positions (memory tokens included) each query may see when sliding."""
        return self.max_seq_len + getattr(self.net, "num_memory_tokens", 0)

    def _band(self, n: int, device: torch.device) -> Tensor | None:
        """(m + n, m + n) sliding-window mask (True = may attend), None while it cuts nothing."""
        total = getattr(self.net, "num_memory_tokens", 0) + n
        if total <= self._window:
            return None
        pos = torch.arange(total, device=device)
        return (pos.unsqueeze(-1) - pos) < self._window

    def _self_attention_entries(self) -> list[int]:
        """Cache entry indices of the self-attention layers (cross entries never slide)."""
        kinds = [t for t in self.net.attn_layers.types if t in "ac"]
        return [i for i, t in enumerate(kinds) if t == "a"]

    def _decode_full(
        self, batch: PromptBatch, seq_len: int, sampler: TokenSampler, kwargs: dict
    ) -> Tensor:
        """Reference path: one full forward over the whole sequence per new token."""
        out, mask, p = batch.tokens, batch.mask, batch.tokens.shape[1]
        extra = {} if batch.start is None else {"seq_start_pos": batch.start}
        for _ in range(seq_len):
            logits = self.net(
                out, mask=mask, attn_mask=self._band(out.shape[1], out.device), **extra, **kwargs
            )
            token = sampler(logits[:, -1])
            out = torch.cat((out, token.unsqueeze(-1)), dim=1)
            if mask is not None:
                mask = torch.cat((mask, mask.new_ones(mask.shape[0], 1)), dim=1)
            if sampler.finished:
                break
        return out[:, p:]

    def _decode_cached(
        self, batch: PromptBatch, seq_len: int, sampler: TokenSampler, kwargs: dict
    ) -> Tensor:
        """Prefill the prompt once, then feed one token per step against the KV cache."""
        tokens, p = batch.tokens, batch.tokens.shape[1]
        extra = {} if batch.start is None else {"seq_start_pos": batch.start}
        logits, cache = self.net(
            tokens,
            mask=batch.mask,
            attn_mask=self._band(p, tokens.device),
            return_cache=True,
            **extra,
            **kwargs,
        )
        self_layers, keep = self._self_attention_entries(), self._window - 1
        generated = []
        for step in range(seq_len):
            token = sampler(logits[:, -1])
            generated.append(token)
            if sampler.finished or step == seq_len - 1:
                break
            cache.slide(keep, self_layers)
            logits, cache = self.net(
                token.unsqueeze(-1), cache=cache, return_cache=True, **extra, **kwargs
            )
        return torch.stack(generated, dim=1)
