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

The checks of generate's arguments live in :mod:`x_attn.wrappers.generation_checks`, the
choice of stepper (static, compiled, KV cache or uncached) and the sampling loop in
:mod:`x_attn.wrappers.generate_loop` (the ordinary stepper is
:class:`x_attn.wrappers.stepper.LogitStepper`); beam search lives in
:mod:`x_attn.wrappers.beam`, the 2021 ``generate`` keywords in
:mod:`x_attn.wrappers.legacy_generate`, training aids in :mod:`x_attn.wrappers.training_aids`.

Shape legend: b batch, n sequence, p prompt length, t generated tokens, v vocabulary,
m memory tokens, k beams.
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
from x_attn.utils import check_nonnegative, check_probability, exists
from x_attn.validation_inputs import token_ids
from x_attn.wrappers import beam
from x_attn.wrappers.decoding import check_causal_net, inference, make_sampler
from x_attn.wrappers.generate_loop import choose_stepper, sample_tokens
from x_attn.wrappers.generation_checks import prepare_generation, uncacheable_reason
from x_attn.wrappers.legacy_generate import translate
from x_attn.wrappers.looped import generation_intermediates, looped_loss
from x_attn.wrappers.next_embed import next_embed_loss
from x_attn.wrappers.stepper import LogitStepper
from x_attn.wrappers.training_aids import forgetful_key_mask, lens_mask

__all__ = ["AutoregressiveWrapper", "uncacheable_reason"]


@records_config
class AutoregressiveWrapper(nn.Module):
    """Next-token training and sampling around a token model (TransformerWrapper + Decoder).

    Args:
        net: the model; called as ``net(tokens, **kwargs) -> logits (b, n, v)``.
        ignore_index: target id excluded from the loss.
        pad_value: token id of left padding and of positions after ``eos_token``.
        mask_prob: forgetful causal masking while training: this fraction of the input
            positions is hidden as keys (:mod:`x_attn.wrappers.training_aids`).
        next_embed_loss_weight: weight of the next-embedding loss of a net built with
            ``add_continuous_pred_head`` (:mod:`x_attn.wrappers.next_embed`).
        looped_loss_threshold_exit, looped_loss_slope, looped_exit_loss_weight: the exit-gate
            loss of a ``looped`` net (:mod:`x_attn.wrappers.looped`).
    """

    @checked_keywords
    def __init__(
        self,
        net: nn.Module,
        ignore_index: int = -100,
        pad_value: int = 0,
        mask_prob: float = 0.0,
        next_embed_loss_weight: float = 0.1,
        looped_loss_threshold_exit: float = 0.05,
        looped_loss_slope: float = 50.0,
        looped_exit_loss_weight: float = 1.0,
    ) -> None:
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
        check_probability("mask_prob", mask_prob, owner)
        if getattr(net, "pools", False):
            raise ValueError(
                f"{owner}: 'net' pools its output (average_pool_embed / use_cls_token), so it "
                "has no per-token logits to predict the next token from"
            )
        check_causal_net(net, owner)
        self.net, self.ignore_index, self.pad_value = net, ignore_index, pad_value
        self.mask_prob = float(mask_prob)
        check_nonnegative("next_embed_loss_weight", next_embed_loss_weight, owner)
        self.next_embed_loss_weight = float(next_embed_loss_weight)
        check_nonnegative("looped_exit_loss_weight", looped_exit_loss_weight, owner)
        check_nonnegative("looped_loss_slope", looped_loss_slope, owner)
        self.looped_weights = (
            float(looped_loss_slope),
            float(looped_loss_threshold_exit),
            float(looped_exit_loss_weight),
        )
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

    def forward(
        self,
        x: Tensor,
        return_outputs: bool = False,
        prepend_embeds: Tensor | None = None,
        lens: Tensor | None = None,
        **kwargs: Any,
    ):
        """Mean next-token cross-entropy of ``x`` (b, n), n >= 2; kwargs go to ``net``.

        A (b, n) ``mask`` is cut to the n - 1 inputs. ``lens`` (b,): positions from a row's
        length on are padding (not predicted). ``prepend_embeds`` (b, p, e) (with
        ``prepend_mask``) go before the tokens; their outputs are not predictions.
        ``return_outputs``: also return ``(logits, intermediates)``.
        """
        owner = f"{type(self).__name__}.forward"
        x = token_ids("x", x, owner)
        if x.ndim != 2 or x.shape[1] < 2:
            raise ValueError(f"{owner}: 'x' must have shape (batch, n >= 2), got {tuple(x.shape)}")
        inp, target = x[:, :-1], x[:, 1:]
        if lens is not None:
            real = lens_mask(lens, x.shape[1], owner)
            inp = inp.masked_fill(~real[:, :-1], self.pad_value)
            target = target.masked_fill(~real[:, 1:], self.ignore_index)
        mask = kwargs.get("mask")
        if isinstance(mask, Tensor) and mask.ndim == 2 and mask.shape[1] == x.shape[1]:
            kwargs["mask"] = mask = mask[:, :-1]
        if self.mask_prob > 0 and self.training:
            keep = forgetful_key_mask(*inp.shape, self.mask_prob, inp.device)
            kwargs["mask"] = keep if mask is None else mask & keep
        if prepend_embeds is not None:
            kwargs.update(prepend_embeds=prepend_embeds, excise_prepend_embeds=True)
        if return_outputs or getattr(self.net, "looped", False):
            kwargs["return_intermediates"] = True
        if getattr(self.net, "looped", False):
            return self._looped_loss(inp, target, kwargs, return_outputs)
        next_embed = self.predicts_next_embed
        if next_embed:
            kwargs["return_next_embed_pred"] = True
        out = self.net(inp, **kwargs)
        head = out[0] if return_outputs else out
        logits, (pred, inputs) = head if next_embed else (head, (None, None))
        loss = F.cross_entropy(
            rearrange(logits, "b n v -> b v n"), target, ignore_index=self.ignore_index
        )
        if next_embed:
            valid = target[:, :-1] != self.ignore_index
            if isinstance(kwargs.get("mask"), Tensor):
                valid = valid & kwargs["mask"][:, 1:]
            loss = loss + self.next_embed_loss_weight * next_embed_loss(pred, inputs, valid)
            out = (logits, out[1]) if return_outputs else logits
        return (loss, out) if return_outputs else loss

    def _looped_loss(self, inp: Tensor, target: Tensor, kwargs: dict, return_outputs: bool):
        """The loss of a looped net: every run's logits and exit gates (see looped.py)."""
        if self.predicts_next_embed:
            raise ValueError(
                f"{type(self).__name__}: the next-embedding loss is not supported with a looped "
                "net; set next_embed_loss_weight=0"
            )
        logits, inter = self.net(inp, looped_pred_all_logits=True, **kwargs)
        loss = looped_loss(
            inter.all_pred_logits, inter.exit_logits, target, self.ignore_index, self.looped_weights
        )
        return (loss, (logits, inter)) if return_outputs else loss

    @property
    def predicts_next_embed(self) -> bool:
        """The net has ``add_continuous_pred_head`` and its loss has a weight (see
        :mod:`x_attn.wrappers.next_embed`)."""
        has_head = getattr(self.net, "to_next_embed_pred", None) is not None
        return has_head and self.next_embed_loss_weight > 0

    def generate(
        self,
        prompts: Tensor | Sequence[Tensor] | None = None,
        seq_len: int | None = None,
        eos_token: int | None = None,
        temperature: float = 1.0,
        filter_logits_fn: str | Callable | None = "top_k",
        filter_kwargs: dict | None = None,
        entmax_alpha: float | None = None,
        cache_kv: bool = True,
        prompt_lens: Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        restrict_to_max_seq_len: bool = True,
        return_prime: bool = False,
        start_tokens: Tensor | None = None,
        filter_thres: float | None = None,
        min_p_pow: float | None = None,
        min_p_ratio: float | None = None,
        static_cache: bool = False,
        compile: bool | str | Callable = False,
        return_intermediates: bool = False,
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
            restrict_to_max_seq_len: past ``max_seq_len`` (relative positions), attend to the
                newest ``max_seq_len`` positions only; False attends to everything.
            return_prime: return the (left-padded) prompts followed by the new tokens.
            start_tokens, filter_thres, min_p_pow, min_p_ratio, mask: the 2021 signature.
            static_cache: decode with preallocated key/value buffers and tensor positions
                (:mod:`x_attn.decode`; same tokens); a model or option it cannot serve is
                refused with a ValueError naming it.
            compile: with ``static_cache``, compile the prefill and the decode step with
                ``torch.compile(fullgraph=True, dynamic=False)``: True (inductor), a backend
                name or callable. Compiled once per shape, reused by later calls.
            return_intermediates: also return the intermediates of the decoding (its KV cache;
                a looped net's exit indices and per-run caches); needs the KV cache.
            **kwargs: model inputs (``context``, ``context_mask``, ``prepend_embeds``, ...).

        Returns:
            (b, t) generated tokens (prompts excluded), t <= seq_len; (t,) for a 1-D prompt.
        """
        owner = f"{type(self).__name__}.generate"
        legacy = dict(filter_thres=filter_thres, min_p_pow=min_p_pow, min_p_ratio=min_p_ratio)
        opts = translate(
            owner,
            prompts,
            start_tokens,
            filter_logits_fn,
            filter_kwargs,
            entmax_alpha,
            {**legacy, "mask": kwargs.pop("mask", None)},
        )
        batch = prepare_generation(
            self, opts.prompts, prompt_lens, seq_len, restrict_to_max_seq_len, kwargs, self.generate
        )
        sampler = make_sampler(
            self.net,
            self.pad_value,
            owner,
            temperature=temperature,
            filter_logits_fn=opts.filter_logits_fn,
            filter_kwargs=opts.filter_kwargs,
            entmax_alpha=opts.entmax_alpha,
            eos_token=eos_token,
            generator=generator,
        )
        with inference(self.net):
            stepper = choose_stepper(
                self,
                batch,
                seq_len,
                kwargs,
                restrict=restrict_to_max_seq_len,
                cache_kv=cache_kv,
                static_cache=static_cache,
                compile=compile,
                return_intermediates=return_intermediates,
            )
            out = sample_tokens(stepper, sampler, seq_len)
        if return_prime:
            out = torch.cat((batch.tokens, out), dim=1)
        out = out[0] if batch.squeeze else out
        return (out, generation_intermediates(stepper.cache)) if return_intermediates else out

    def beam_search(
        self,
        prompts: Tensor | Sequence[Tensor],
        seq_len: int,
        beams: int = 4,
        return_beams_and_scores: bool = False,
        eos_token: int | None = None,
        temperature: float = 1.0,
        stochastic: bool = False,
        prompt_lens: Tensor | None = None,
        filter_logits_fn: str | Callable | None = None,
        restrict_to_max_seq_len: bool = True,
        filter_kwargs: dict | None = None,
        cache_kv: bool = True,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ):
        """The ``beams`` most likely continuations of ``seq_len`` tokens (:mod:`.beam`).

        Scores are summed log-probabilities of the generated tokens. ``stochastic=True``
        proposes candidates by Gumbel-top-k sampling from the tempered (and filtered) logits.
        Prompts, ``prompt_lens``, ``cache_kv``, ``restrict_to_max_seq_len`` and model inputs
        as in :meth:`generate`.

        Returns:
            The best sequence (b, t); with ``return_beams_and_scores``, all beams (k, b, t),
            best first, and their scores (k, b). Without a batch axis in the prompt: (t,),
            or (k, t) and (k,).
        """
        owner = f"{type(self).__name__}.beam_search"
        batch = prepare_generation(
            self, prompts, prompt_lens, seq_len, restrict_to_max_seq_len, kwargs, self.beam_search
        )
        beam.check_eos(eos_token, getattr(self.net, "num_tokens", None), owner)
        proposer = beam.make_proposer(
            beams, temperature, stochastic, filter_logits_fn, filter_kwargs, generator
        )
        cached = cache_kv and self._cache_usable()
        with inference(self.net):
            stepper = LogitStepper(self, batch, kwargs, cached, restrict_to_max_seq_len)
            out, scores = beam.search(stepper, seq_len, beams, proposer, eos_token, self.pad_value)
        out, scores = rearrange(out, "b k t -> k b t"), rearrange(scores, "b k -> k b")
        if batch.squeeze:
            out, scores = out[:, 0], scores[:, 0]
        return (out, scores) if return_beams_and_scores else out[0]

    def _cache_usable(self, stacklevel: int = 3) -> bool:
        """False (warning once, at the caller of generate / beam_search) when uncacheable."""
        reason = self.uncacheable_reason
        if reason is None:
            return True
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"{type(self).__name__}: generating without the KV cache because {reason}; "
                "the tokens are the same, only slower (pass cache_kv=False to silence this)",
                RuntimeWarning,
                stacklevel=stacklevel,
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
