"""Autoregressive training (next-token loss) and generation with a KV cache.

Sampling filters (top-k, top-p, min-p, top-a) and entmax sampling ("Sparse Text Generation",
Martins et al., arXiv 2004.02644) live in :mod:`x_attn.wrappers.sampling`; this module runs
the decoding loop around them.

Generation semantics:
    * prompts of different lengths are left-padded and masked: padding is never attended
      and takes no position, so each row gets the positions (absolute, relative, memory
      tokens included) and the tokens it gets alone;
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

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from x_attn.routing import checked_keywords
from x_attn.serialization import records_config
from x_attn.utils import check_positive_int, exists
from x_attn.validation import token_ids
from x_attn.wrappers.decoding import (
    PromptBatch,
    TokenSampler,
    check_causal_net,
    check_passthrough,
    inference,
    make_sampler,
    prepare_prompts,
)

__all__ = ["AutoregressiveWrapper"]

_RELATIVE_HINT = (
    "; use relative positions (rotary_pos_emb=True, rel_pos_bias=True or alibi_pos_bias=True "
    "on the Decoder) to generate past max_seq_len with a sliding window"
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


@records_config
class AutoregressiveWrapper(nn.Module):
    """Next-token training and sampling around a token model (TransformerWrapper + Decoder).

    Args:
        net: the model; called as ``net(tokens, **kwargs) -> logits (b, n, v)``.
        ignore_index: target id excluded from the loss.
        pad_value: token id of left padding and of positions after ``eos_token``.
    """

    @checked_keywords
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
        check_causal_net(net, owner)
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
        x = token_ids("x", x, owner)
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
        sampler = make_sampler(
            self.net,
            self.pad_value,
            owner,
            temperature=temperature,
            filter_logits_fn=filter_logits_fn,
            filter_kwargs=filter_kwargs,
            entmax_alpha=entmax_alpha,
            eos_token=eos_token,
            generator=generator,
        )
        check_passthrough(kwargs, owner, self.net, self.generate)
        self._check_length(batch.tokens.shape[1], seq_len, owner)
        decode = self._decode_cached if cache_kv and self._cache_usable() else self._decode_full
        with inference(self.net):
            out = decode(batch, seq_len, sampler, kwargs)
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
