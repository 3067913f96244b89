"""Transformer-XL training and generation with segment-level recurrence.

Transformer-XL: Attentive Language Models Beyond a Fixed-Length Context (Dai et al.,
arXiv 1901.02860). A long sequence is cut into segments of ``max_seq_len`` tokens; each segment
attends to the cached, detached layer inputs ("mems") of the previous ones, at most
``max_mem_len`` of them per layer. With relative positions (rotary, T5, ALiBi) and a memory that
covers everything before, each segment computes exactly what one causal pass over the whole
sequence would.

Shape legend: b batch, n sequence, s segment length, m memory length, d model dim, v vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from x_attn.routing import checked_keywords
from x_attn.serialization import records_config
from x_attn.utils import check_positive_int
from x_attn.wrappers.decoding import (
    TokenSampler,
    check_causal_net,
    check_passthrough,
    inference,
    make_sampler,
    prepare_prompts,
)

__all__ = ["XLAutoregressiveWrapper"]


@records_config
class XLAutoregressiveWrapper(nn.Module):
    """Segment-by-segment training and generation of a TransformerWrapper with ``max_mem_len``.

    Args:
        net: a token model taking ``mems=`` and ``return_mems=True`` (TransformerWrapper with
            a Decoder; relative positions recommended, learned absolute positions restart at 0
            in every segment).
        ignore_index: target id excluded from the loss.
        pad_value: token id of positions after ``eos_token``.
    """

    @checked_keywords
    def __init__(self, net: nn.Module, ignore_index: int = -100, pad_value: int = 0) -> None:
        super().__init__()
        owner = type(self).__name__
        if not isinstance(net, nn.Module) or not hasattr(net, "max_mem_len"):
            raise TypeError(
                f"{owner}: 'net' must be a TransformerWrapper built with max_mem_len=..., got "
                f"{type(net).__name__}"
            )
        for name, value in (("ignore_index", ignore_index), ("pad_value", pad_value)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{owner}: '{name}' must be an int, got {value!r}")
        check_causal_net(net, owner)
        self.net, self.ignore_index, self.pad_value = net, ignore_index, pad_value

    @property
    def max_seq_len(self) -> int:
        """Segment length."""
        return self.net.max_seq_len

    def forward(
        self,
        x: Tensor,
        mems: list[Tensor] | None = None,
        return_mems: bool = False,
        **kwargs: Any,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Mean next-token cross-entropy of ``x`` (b, n), run in segments of ``max_seq_len``.

        The loss averages over every non-ignored target of the whole sequence, so with a memory
        that covers it, it equals the loss of one pass. Gradients stop at the mems.

        Args:
            x: (b, n) token ids, n >= 2 (n - 1 predictions).
            mems: mems returned by an earlier call, to continue a stream.
            return_mems: also return the mems after the last segment.
            **kwargs: other model inputs (no padding ``mask``).

        Returns:
            loss, or (loss, mems).
        """
        owner = f"{type(self).__name__}.forward"
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] < 2:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{owner}: 'x' must be a (batch, n >= 2) token tensor, got {got}")
        check_passthrough(kwargs, owner, self.net, self.forward)
        inp, target = x[:, :-1], x[:, 1:]
        total, count = 0.0, 0
        for seg_in, seg_target in zip(self._segments(inp), self._segments(target)):
            logits, mems = self.net(seg_in, mems=mems, return_mems=True, **kwargs)
            total = total + F.cross_entropy(
                rearrange(logits, "b s v -> b v s"),
                seg_target,
                ignore_index=self.ignore_index,
                reduction="sum",
            )
            count += int((seg_target != self.ignore_index).sum())
        loss = total / count if count else total * float("nan")  # all ignored: nan, as torch
        return (loss, mems) if return_mems else loss

    def _segments(self, t: Tensor) -> tuple[Tensor, ...]:
        return t.split(self.max_seq_len, dim=1)

    def generate(
        self,
        prompts: Tensor | Sequence[Tensor],
        seq_len: int,
        eos_token: int | None = None,
        temperature: float = 1.0,
        filter_logits_fn: str | Callable | None = "top_k",
        filter_kwargs: dict | None = None,
        entmax_alpha: float | None = None,
        mems: list[Tensor] | None = None,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Sample ``seq_len`` tokens after prompts of one length, carrying mems across segments.

        The prompt is fed in segments of ``max_seq_len``; decoding re-runs the current segment
        (at most ``max_seq_len`` tokens) against the mems at each step, and moves a full
        segment into the mems. Arguments as in ``AutoregressiveWrapper.generate``; ``mems``
        continues from an earlier stream.

        Returns:
            (b, t) generated tokens, t <= seq_len; (t,) for a 1-D prompt.
        """
        owner = f"{type(self).__name__}.generate"
        batch = prepare_prompts(prompts, None, self.pad_value, owner)
        if batch.mask is not None:
            raise ValueError(
                f"{owner}: prompts of different lengths are not supported (segments are cut at "
                "the same index in every row, so padding would move a row's segment "
                "boundaries); generate each length separately or trim them to one length"
            )
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
        with inference(self.net):
            out = self._decode(batch.tokens, seq_len, sampler, mems, kwargs)
        return out[0] if batch.squeeze else out

    def _decode(
        self, tokens: Tensor, seq_len: int, sampler: TokenSampler, mems, kwargs: dict
    ) -> Tensor:
        *done, segment = self._segments(tokens)
        for seg in done:
            _, mems = self.net(seg, mems=mems, return_mems=True, **kwargs)
        generated = []
        for _ in range(seq_len):
            logits, new_mems = self.net(segment, mems=mems, return_mems=True, **kwargs)
            token = sampler(logits[:, -1]).unsqueeze(-1)
            generated.append(token)
            if segment.shape[1] == self.max_seq_len:
                mems, segment = new_mems, token
            else:
                segment = torch.cat((segment, token), dim=1)
            if sampler.finished:
                break
        return torch.cat(generated, dim=1)
