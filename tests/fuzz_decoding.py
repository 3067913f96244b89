"""Decoding properties of the fuzzer (tests/test_fuzz.py): KV cache, the x-transformers cache
protocol, Transformer-XL mems, padded generation, seq_start_pos, AutoregressiveWrapper.

References: the full forward over the whole sequence (float64, 1e-9) and generating each prompt
alone. Where the issue allows a combination to be refused instead (cache reuse, mems with a
padding mask or a cache, padded generation), a ValueError/TypeError naming the argument counts
as a pass; any other exception is a failure.

Shape legend: b batch, n sequence, p prompt length, s segment length.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from fuzz_properties import LEFT_PADDING_REFUSALS, close, finite, left_padding_refused
from fuzz_strategies import VOCAB, Subject
from torch import Tensor

from x_attn import AutoregressiveWrapper

ATOL = 1e-9
REFUSED = object()


def refusable(call: Callable[[], Any], *names: str) -> Any:
    """``call()``, or REFUSED when it raises a ValueError/TypeError naming one of ``names``."""
    try:
        return call()
    except (ValueError, TypeError) as error:
        assert any(n in str(error) for n in names), f"refusal names none of {names}: {error}"
        return REFUSED


def _full(s: Subject, x: Tensor, mask: Tensor | None = None) -> Tensor:
    with torch.no_grad():
        out = s(x, mask=mask)
    finite(out, "full forward")
    return out


def _real(mask: Tensor | None, shape: tuple[int, ...]) -> Tensor:
    return mask if mask is not None else torch.ones(shape, dtype=torch.bool)


def _cut(mask: Tensor | None, start: int, end: int) -> Tensor | None:
    return None if mask is None else mask[:, start:end]


def uncacheable(s: Subject) -> bool:
    return AutoregressiveWrapper(s.net).uncacheable_reason is not None


# ------------------------------------------------------------------------------------------
# explicit KVCache


def cached_equals_full(s: Subject, x: Tensor, mask: Tensor | None, chunks: list[int]) -> None:
    """Prefill (masked) + chunks against one KVCache == the full forward at real positions."""
    n, p = x.shape[1], x.shape[1] - sum(chunks)
    full = _full(s, x, mask)
    with torch.no_grad():
        out, cache = s(x[:, :p], mask=_cut(mask, 0, p), return_cache=True)
        outs, t = [out], p
        for size in chunks:
            step = x[:, t : t + size]
            out, cache = s(step, mask=_cut(mask, t, t + size), cache=cache, return_cache=True)
            outs.append(out)
            t += size
    real = _real(mask, x.shape[:2])
    close(torch.cat(outs, 1)[real], full[real], ATOL, "cached outputs differ from the full pass")
    assert cache.length == n + s.net.num_memory_tokens


def cache_reuse(s: Subject, x: Tensor, p: int) -> None:
    """Caches are values: two continuations from one prefilled cache each equal their full
    forward, and the cache they started from is left as it was."""
    y = s.changed(x, torch.arange(x.shape[1]) >= p)
    with torch.no_grad():
        _, cache = s(x[:, :p], return_cache=True)
        length = cache.length
        for seq in (x, y):
            step, _ = s(seq[:, p : p + 1], cache=cache, return_cache=True)
            close(step[:, 0], _full(s, seq[:, : p + 1])[:, p], ATOL, "continuing a reused cache")
    assert cache.length == length, "a forward changed the cache it was given"


def whole_sequence_with_cache(s: Subject, x: Tensor, p: int) -> None:
    """The whole sequence with a KVCache of its first p tokens: the new tokens' logits with
    input_not_include_cache=False; refused without it (token models, which can tell)."""
    with torch.no_grad():
        _, cache = s(x[:, :p], return_cache=True)
        out = s(x, cache=cache, input_not_include_cache=False)
        close(out, _full(s, x)[:, p:], ATOL, "whole sequence with a cache")
        if s.case.tokens:
            again = refusable(lambda: s(x, cache=cache, return_cache=True), "cache")
            assert again is REFUSED, "the whole sequence was taken as new tokens"


# ------------------------------------------------------------------------------------------
# the x-transformers protocol: logits, cache = model(x, return_intermediates=True)


def protocol(s: Subject, x: Tensor, p: int, new_only: bool, branch: bool) -> None:
    """``model(x_so_far, cache=cache)`` returns the full forward's logits of the new tokens."""
    n = x.shape[1]
    full = _full(s, x)
    with torch.no_grad():
        out, cache = s(x[:, :p], return_intermediates=True)
        close(out, full[:, :p], ATOL, "protocol prefill")
        first = cache
        for t in range(p + 1, n + 1):
            start = t - 1 if new_only else 0
            extra = {"input_not_include_cache": True} if new_only else {}
            out, cache = s(x[:, start:t], cache=cache, return_intermediates=True, **extra)
            w = out.shape[1]
            close(out, full[:, t - w : t], ATOL, f"protocol step to length {t}")
        if branch:  # the first cache again, for a second continuation
            y = s.changed(x, torch.arange(n) >= p)
            out, _ = s(y[:, : p + 1], cache=first, return_intermediates=True)
            close(out[:, -1], _full(s, y[:, : p + 1])[:, -1], ATOL, "reused protocol cache")


# ------------------------------------------------------------------------------------------
# Transformer-XL mems


def _segments(s: Subject, x: Tensor, mask: Tensor | None, sizes: list[int]) -> Any:
    """The outputs of ``x`` run in segments with mems, or REFUSED (naming mems)."""
    outs, mems, start = [], None, 0
    with torch.no_grad():
        for size in sizes:
            seg_mask = _cut(mask, start, start + size)
            result = refusable(
                lambda mems=mems, start=start, seg_mask=seg_mask, size=size: s(
                    x[:, start : start + size], mask=seg_mask, mems=mems, return_mems=True
                ),
                "mems",
            )
            if result is REFUSED:
                return REFUSED
            out, mems = result
            outs.append(out)
            start += size
    return torch.cat(outs, 1)


def mems_equal_one_pass(s: Subject, x: Tensor, mask: Tensor | None, sizes: list[int]) -> None:
    """Segments with mems == one pass with the same mask (or the model refuses mems, with or
    without a mask: mems carry their padding, so a mask is never the reason)."""
    full = _full(s, x, mask)
    out = _segments(s, x, mask, sizes)
    if out is REFUSED:
        if mask is not None:
            assert _segments(s, x, None, sizes) is REFUSED, "mems refused only with a mask"
        return
    real = _real(mask, x.shape[:2])
    close(out[real], full[real], ATOL, "segments with mems != one pass")


def mems_with_cache(s: Subject, x: Tensor, first: int, every_step: bool) -> None:
    """Mems of a first segment, then cached decoding of the rest == one pass (or the model
    refuses mems); mems passed again with a filled cache are refused (the cache holds them)."""
    full = _full(s, x)
    with torch.no_grad():
        first_segment = refusable(lambda: s(x[:, :first], return_mems=True), "return_mems")
        if first_segment is REFUSED:  # a stack without self-attention keeps no mems
            assert s.net.attn_layers.num_self_attention_layers == 0
            return
        _, mems = first_segment
        prefill = first + 1
        result = refusable(lambda: s(x[:, first:prefill], mems=mems, return_cache=True), "mems")
        if result is REFUSED:
            return
        out, cache = result
        outs = [out]
        for t in range(prefill, x.shape[1]):
            step = x[:, t : t + 1]
            if every_step:
                again = refusable(
                    lambda c=cache, t=step: s(t, mems=mems, cache=c, return_cache=True), "mems"
                )
                assert again is REFUSED, "mems passed again with a filled cache were accepted"
            out, cache = s(step, cache=cache, return_cache=True)
            outs.append(out)
    close(torch.cat(outs, 1), full[:, first:], ATOL, "mems + cache != one pass")


# ------------------------------------------------------------------------------------------
# generation


def _generate(s: Subject, prompts, steps: int, rows: slice | None = None, **kw: Any) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # uncacheable: falls back, warns
        if s.case.arch == "xtransformer":
            src = s.extra(rows)
            context, mask = src["context"], src["context_mask"]
            return s.root.decoder.generate(
                prompts, steps, temperature=0.0, context=context, context_mask=mask, **kw
            )
        ar = AutoregressiveWrapper(s.net)
        return ar.generate(prompts, steps, temperature=0.0, **s.extra(rows), **kw)


def _prompts(s: Subject, lengths: list[int]) -> list[Tensor]:
    g = torch.Generator().manual_seed(3 + s.case.seed)
    lengths = (lengths * s.case.batch)[: s.case.batch]
    return [torch.randint(0, VOCAB, (n,), generator=g) for n in lengths]


def left_padded_equals_alone(s: Subject, lengths: list[int]) -> None:
    """What generation runs: a left-padded prefill (mask + seq_start_pos) and a cached step
    give each row the logits of its prompt run alone (or the padded call is refused)."""
    prompts = _prompts(s, lengths)
    width = max(len(p) for p in prompts)
    start = torch.tensor([width - len(p) for p in prompts])
    tokens = torch.stack([torch.cat((p.new_zeros(width - len(p)), p)) for p in prompts])
    mask = torch.arange(width) >= start.unsqueeze(-1)
    nxt = torch.ones(len(prompts), 1, dtype=torch.long)
    with torch.no_grad():
        result = refusable(
            lambda: s(tokens, mask=mask, seq_start_pos=start, return_cache=True),
            *LEFT_PADDING_REFUSALS,  # refused by design (memory tokens, global token slots)
        )
        if result is REFUSED:
            return
        padded, cache = result
        step, _ = s(nxt, cache=cache, seq_start_pos=start, return_cache=True)
        for row, prompt in enumerate(prompts):
            alone = s.net(torch.cat((prompt, nxt[row]))[None], **s.extra(slice(row, row + 1)))
            k = len(prompt)
            close(padded[row, -k:], alone[0, :k], ATOL, f"row {row}: padded prefill != alone")
            close(step[row, -1], alone[0, -1], ATOL, f"row {row}: padded cached step != alone")


def padded_generation(s: Subject, lengths: list[int], steps: int) -> None:
    """Greedy generation of a left-padded batch == each prompt alone; cached == uncached."""
    prompts = _prompts(s, lengths)
    # left padding is refused by design for memory tokens and slot-anchored global tokens
    batch = refusable(lambda: _generate(s, prompts, steps), *LEFT_PADDING_REFUSALS)
    if batch is REFUSED:
        return
    uncached = _generate(s, prompts, steps, cache_kv=False)
    assert torch.equal(batch, uncached), "cached and uncached padded generation differ"
    for row, prompt in enumerate(prompts):
        alone = _generate(s, prompt.unsqueeze(0), steps, rows=slice(row, row + 1))
        assert torch.equal(batch[row], alone[0]), f"row {row}: padded batch != generated alone"


def seq_start_pos_masks_padding(s: Subject, x: Tensor, start: Tensor) -> None:
    """Left padding given by seq_start_pos: changing the pad tokens moves no real output."""
    pad = torch.arange(x.shape[1]) < start.unsqueeze(-1)
    with torch.no_grad():
        try:
            a = s(x, seq_start_pos=start)
        except ValueError as error:  # refused by design, as in fuzz_properties.usable_mask
            if not left_padding_refused(error):
                raise
            return
        b = s(s.changed(x, pad), seq_start_pos=start)
    close(a[~pad], b[~pad], msg="pad tokens before seq_start_pos changed real outputs")


def autoregressive_is_causal(s: Subject, x: Tensor) -> None:
    """A model AutoregressiveWrapper accepts must not see the future (or it is refused)."""
    if refusable(lambda: AutoregressiveWrapper(s.net), "causal", "Encoder") is REFUSED:
        return
    t = x.shape[1] // 2
    with torch.no_grad():
        a, b = s(x), s(s.changed(x, torch.arange(x.shape[1]) >= t))
    close(a[:, :t], b[:, :t], msg="AutoregressiveWrapper accepted a model that sees the future")
