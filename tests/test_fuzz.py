"""Property fuzzer: random flag sets x architectures x usage patterns (issue 7).

Each draw (tests/fuzz_strategies.py) is several flags from ``x_attn.registry.FLAGS`` with legal
values, one architecture (token / continuous decoder or encoder, a cross-attending Decoder, a
CrossAttender, an XTransformer's decoder) and the options of one usage pattern. The library
either refuses the draw at construction with a ValueError/TypeError naming a drawn flag, or the
draw keeps every property that applies (tests/fuzz_properties.py, tests/fuzz_decoding.py).

Profiles (tests/conftest.py): ``ci`` (default, derandomized, about 200 draws in all) and
``thorough`` (``pytest -m thorough``, thousands of draws). ``HYPOTHESIS_PROFILE=name`` overrides.

KNOWN_OPEN below lists the (flags, pattern, property) combinations of bugs that are open, each
with its regression test in tests/test_fuzz_regressions.py; the fuzzer skips only those
properties of only those draws (a draw left with nothing to check is discarded, so the profile's
draws all check something). When a fix lands, delete its entry.

Shape legend: b batch, n sequence, h heads.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fuzz_decoding as dec
import fuzz_properties as props
import pytest
import torch
from fuzz_strategies import CAUSAL_ARCHS, TOKEN_ARCHS, Case, build, cases
from hypothesis import assume, given, seed, settings
from hypothesis import strategies as st

from x_attn.registry import flag_case


@dataclass(frozen=True)
class KnownOpen:
    """An open bug: the properties it breaks on the draws ``applies`` selects."""

    bug: str
    properties: frozenset[str]
    applies: Callable[[Case], bool]
    regression: str  # the test in tests/test_fuzz_regressions.py that pins it


def _query_conv(c: Case) -> bool:
    """Multi-Token Attention with a key-query convolution that reaches earlier queries."""
    return c.has("attn_mta") and c.layer_kw.get("attn_mta_kernel_q", 6) > 1


# Open bugs the fuzzer found. Delete an entry when its fix lands.
KNOWN_OPEN: tuple[KnownOpen, ...] = ()


def expected(case: Case, prop: str) -> bool:
    """False when ``prop`` is broken on ``case`` by a bug listed in KNOWN_OPEN."""
    return not any(prop in k.properties and k.applies(case) for k in KNOWN_OPEN)


def checkable(case: Case, prop: str) -> None:
    """Discard a draw whose only property is broken by a known-open bug: hypothesis draws
    another one, so the profile's budget goes to draws that check something."""
    assume(expected(case, prop))


def run_profile(strategy: st.SearchStrategy, check: Callable[[Any], None], profile: str) -> None:
    """Run ``check`` on draws of ``strategy`` under a hypothesis settings profile."""
    name = os.environ.get("HYPOTHESIS_PROFILE") or profile

    @settings(settings.get_profile(name))
    @given(strategy)
    def inner(case: Any) -> None:
        check(case)

    if settings.get_profile(name).derandomize:  # each test its own fixed sequence of draws
        inner = seed(zlib.crc32(check.__name__.encode()))(inner)
    inner()


PROFILES = ["ci", pytest.param("thorough", marks=pytest.mark.thorough)]


def test_known_open_entries_point_at_strict_xfail_regressions() -> None:
    """Each KNOWN_OPEN entry names a regression test that exists and is still marked open."""
    import test_fuzz_regressions as regressions

    for entry in KNOWN_OPEN:
        test = getattr(regressions, entry.regression, None)
        assert test is not None, f"{entry.bug}: no test named {entry.regression}"
        marks = [m for m in getattr(test, "pytestmark", []) if m.name == "xfail"]
        assert marks and marks[0].kwargs.get("strict"), f"{entry.regression} is not xfail(strict)"


# ------------------------------------------------------------------------------------------
# forward: masks, per-head masks, causality, kernels, round trips


def forward_opts(draw: st.DrawFn, case: Case) -> dict[str, Any]:
    opts = {"mask": draw(st.sampled_from((None, "padding", "empty-row")))}
    if case.arch != "crossattender":  # no attn_mask where a flag applies none (any_mask=False)
        any_mask = all(flag_case(f).any_mask for f in case.flags)
        opts["head_mask"] = draw(st.booleans()) and any_mask
    if case.arch in ("cross", "crossattender", "xtransformer"):
        opts["empty_context_row"] = draw(st.booleans())
    if case.arch.startswith("continuous"):
        opts["dim_in"] = draw(st.sampled_from((None, 5)))
        opts["dim_out"] = draw(st.sampled_from((None, 3)))
    return opts


def check_forward(case: Case) -> None:
    s = build(case, check_refusal=expected(case, "refusal"))
    if s is None:
        return
    x, mask = s.inputs(), props.usable_mask(s)
    attn_mask, hidden = props.head_mask(s)
    if _query_conv(case):  # attn_mask hides keys, not queries: MTA's query convolution
        hidden = torch.zeros_like(hidden)  # reads the hidden token's query row (by design)
    kw = {} if attn_mask is None else {"attn_mask": attn_mask}
    if expected(case, "finite"):
        props.finite_forward_backward(s, x, mask=mask, **kw)
    if case.causal and expected(case, "causal"):
        props.causal(s, x, mask=mask, **kw)
    if expected(case, "masked_keys"):
        props.masked_keys(s, x, mask, hidden, **kw)
    if expected(case, "fused_manual"):
        props.fused_equals_manual(s, x, mask=mask, **kw)
    props.round_trip(s, x)
    if expected(case, "position_aware"):
        props.position_aware(s, x)
    if expected(case, "flag_effect"):
        props.flag_effect(s, x)


@pytest.mark.parametrize("profile", PROFILES)
def test_fuzz_forward(profile: str) -> None:
    run_profile(cases(opts=forward_opts), check_forward, profile)


# ------------------------------------------------------------------------------------------
# KV cache and the x-transformers cache protocol


def cache_opts(draw: st.DrawFn, case: Case) -> dict[str, Any]:
    mode = draw(st.sampled_from(("steps", "reuse", "whole", "protocol", "protocol-branch")))
    opts = {"mode": mode, "prefill": draw(st.integers(1, case.n - 1))}
    if mode == "steps":
        opts["mask"] = draw(st.sampled_from((None, "padding")))
        opts["chunk"] = draw(st.integers(1, 3))
    if mode.startswith("protocol"):
        opts["new_only"] = draw(st.booleans())
    return opts


def check_cache(case: Case) -> None:
    checkable(case, f"cache_{case.opt('mode')}")
    s = build(case, check_refusal=expected(case, "refusal"))
    mode = case.opt("mode")
    if s is None or dec.uncacheable(s):
        return
    x, p = s.inputs(), case.opt("prefill")
    if mode == "steps":
        rest, chunk = case.n - p, case.opt("chunk")
        chunks = [chunk] * (rest // chunk) + ([rest % chunk] if rest % chunk else [])
        dec.cached_equals_full(s, x, props.usable_mask(s), chunks)
    elif mode == "reuse":
        dec.cache_reuse(s, x, p)
    elif mode == "whole":
        dec.whole_sequence_with_cache(s, x, p)
    else:
        dec.protocol(s, x, p, case.opt("new_only"), branch=mode == "protocol-branch")


@pytest.mark.parametrize("profile", PROFILES)
def test_fuzz_cache(profile: str) -> None:
    run_profile(cases(archs=CAUSAL_ARCHS, opts=cache_opts), check_cache, profile)


# ------------------------------------------------------------------------------------------
# Transformer-XL mems


MEMS_ARCHS = ("decoder", "cross", "continuous-decoder")


def mems_opts(draw: st.DrawFn, case: Case) -> dict[str, Any]:
    mode = draw(st.sampled_from(("segments", "segments", "cache")))
    opts = {"mode": mode, "max_mem_len": 64}
    if mode == "segments":
        opts["mask"] = draw(st.sampled_from((None, "padding")))
        opts["segment"] = draw(st.integers(1, 4))
    else:
        opts["first"] = draw(st.integers(1, case.n - 2))
        opts["every_step"] = draw(st.booleans())
    return opts


def check_mems(case: Case) -> None:
    if not case.relative and case.wrapper_kw.get("use_abs_pos_emb", True):
        case = case.with_layers(rotary_pos_emb=True)  # absolute positions restart per segment
    checkable(case, f"mems_{case.opt('mode')}")
    s = build(case, check_refusal=expected(case, "refusal"))
    if s is None:
        return
    x = s.inputs()
    if case.opt("mode") == "segments":
        size = case.opt("segment")
        sizes = [size] * (case.n // size) + ([case.n % size] if case.n % size else [])
        dec.mems_equal_one_pass(s, x, props.usable_mask(s), sizes)
    else:
        dec.mems_with_cache(s, x, case.opt("first"), case.opt("every_step"))


@pytest.mark.parametrize("profile", PROFILES)
def test_fuzz_mems(profile: str) -> None:
    run_profile(cases(archs=MEMS_ARCHS, opts=mems_opts), check_mems, profile)


# ------------------------------------------------------------------------------------------
# generation: padded batches, seq_start_pos, AutoregressiveWrapper on any stack


def generate_opts(draw: st.DrawFn, case: Case) -> dict[str, Any]:
    mode = draw(st.sampled_from(("padded", "padded", "seq_start_pos", "ar_causal")))
    opts: dict[str, Any] = {"mode": mode}
    if mode == "padded":
        opts["lengths"] = draw(st.lists(st.integers(1, 5), min_size=3, max_size=3))
        opts["steps"] = draw(st.integers(1, 4))
    if mode == "seq_start_pos":
        opts["start"] = draw(st.lists(st.integers(0, case.n - 1), min_size=3, max_size=3))
    return opts


def check_generate(case: Case) -> None:
    mode = case.opt("mode")
    assume(mode != "padded" or case.causal)  # a causal token model; ar_causal: the others
    checkable(case, mode)
    s = build(case, check_refusal=expected(case, "refusal"))
    if s is None:
        return
    x = s.inputs()
    try:
        _generate_checks(s, case, mode, x)
    except ValueError as error:  # left padding refused by design (see props.usable_mask)
        if not props.left_padding_refused(error):
            raise


def _generate_checks(s, case: Case, mode: str, x) -> None:
    if mode == "padded":
        if not dec.uncacheable(s):
            dec.left_padded_equals_alone(s, case.opt("lengths"))
        dec.padded_generation(s, case.opt("lengths"), case.opt("steps"))
    elif mode == "seq_start_pos":
        dec.seq_start_pos_masks_padding(s, x, torch.tensor(case.opt("start")[: case.batch]))
    else:
        dec.autoregressive_is_causal(s, x)


@pytest.mark.parametrize("profile", PROFILES)
def test_fuzz_generate(profile: str) -> None:
    run_profile(cases(archs=TOKEN_ARCHS, opts=generate_opts), check_generate, profile)


# ------------------------------------------------------------------------------------------
# low precision: float16 model, bfloat16 autocast, against the float64 model


# continuous inputs reach the norms and kernels unnormalised (large values, zero vectors)
PRECISION_ARCHS = (
    ("decoder", "cross", "xtransformer") + ("continuous-decoder",) * 2 + ("continuous-encoder",) * 2
)


def precision_opts(draw: st.DrawFn, case: Case) -> dict[str, Any]:
    opts = {
        "dtype": draw(st.sampled_from(("float16", "bf16-autocast"))),
        "mask": draw(st.sampled_from((None, "padding"))),
        "init": draw(st.sampled_from(("jittered", "default"))),
    }
    if case.arch.startswith("continuous"):
        # activations past the float16 range of x^2 and q.k (bfloat16 has float32's range);
        # one block only: un-normalised deeper stacks (use_rezero) compound them past what
        # any float16 kernel can hold
        large = (1.0, 300.0) if opts["dtype"] == "float16" and case.depth == 1 else (1.0,)
        opts["scale"] = draw(st.sampled_from(large))
        opts["zero_rows"] = draw(st.booleans())
        opts["dim_in"] = None if opts["zero_rows"] else draw(st.sampled_from((None, 5)))
    return opts


def check_precision(case: Case) -> None:
    s = build(case, check_refusal=expected(case, "refusal"))
    if s is not None:
        skip = lambda kernel: not expected(case, f"low_precision_{kernel}")  # noqa: E731
        props.low_precision(s, case.opt("dtype"), props.usable_mask(s), skip)


@pytest.mark.parametrize("profile", PROFILES)
def test_fuzz_low_precision(profile: str) -> None:
    run_profile(cases(archs=PRECISION_ARCHS, opts=precision_opts), check_precision, profile)
