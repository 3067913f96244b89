"""One trigger per user-facing error row of docs/errors.md (issue 7).

Each case builds a tiny model, makes the mistake the row describes and returns nothing; the
tests check that it raises the row's exception type with the row's message. Keep the ids in
step with the first column of docs/errors.md (a test checks both directions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from x_attn import (
    AutoregressiveWrapper,
    CrossAttender,
    Decoder,
    TransformerWrapper,
    XLAutoregressiveWrapper,
)
from x_attn.cache import KVCache

DIMS = dict(dim=16, heads=2, attn_dim_head=8)


@dataclass(frozen=True)
class ErrorCase:
    trigger: Callable[[], object]
    error: type[Exception]


def lm(depth: int = 2, **layer_flags) -> TransformerWrapper:
    layers = Decoder(depth=depth, **DIMS, **layer_flags)
    return TransformerWrapper(num_tokens=10, max_seq_len=16, attn_layers=layers).eval()


def small(**wrapper_kwargs) -> TransformerWrapper:
    """A TransformerWrapper around a one-layer Decoder, with ``wrapper_kwargs``."""
    layers = wrapper_kwargs.pop("attn_layers", None) or Decoder(depth=1, **DIMS)
    return TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=layers, **wrapper_kwargs)


def ids(b: int = 2, n: int = 4) -> torch.Tensor:
    return torch.randint(0, 10, (b, n), generator=torch.Generator().manual_seed(0))


def cached(model: TransformerWrapper, b: int = 2) -> KVCache:
    _, cache = model(ids(b), return_cache=True)
    return cache


def xl_model() -> TransformerWrapper:
    layers = Decoder(depth=2, **DIMS)
    return TransformerWrapper(num_tokens=10, max_seq_len=16, max_mem_len=4, attn_layers=layers)


def xl_mems() -> tuple[TransformerWrapper, list[torch.Tensor]]:
    model = xl_model()
    _, mems = model(ids(), return_mems=True)
    return model, mems


def _mems_dtype():
    model, mems = xl_mems()
    model(ids(), mems=[m.double() for m in mems])


def _mems_not_tensors():
    model, _ = xl_mems()
    model(ids(), mems=[1, 2])


def _cache_batch():
    model = lm()
    model(ids(3, 1), cache=cached(model, b=2))


def _cache_layers():
    model = lm()
    model(ids(2, 1), cache=cached(lm(depth=1)))


CASES: dict[str, ErrorCase] = {
    "context-width": ErrorCase(
        lambda: lm(cross_attend=True)(ids(), context=torch.randn(2, 3, 12)), ValueError
    ),
    "cache-type": ErrorCase(lambda: lm()(ids(), cache={"k": None}), TypeError),
    "cache-batch": ErrorCase(_cache_batch, ValueError),
    "cache-layers": ErrorCase(_cache_layers, ValueError),
    "mems-dtype": ErrorCase(_mems_dtype, TypeError),
    "mems-not-tensors": ErrorCase(_mems_not_tensors, TypeError),
    "num-memory-tokens-negative": ErrorCase(lambda: small(num_memory_tokens=-1), ValueError),
    "num-memory-tokens-float": ErrorCase(lambda: small(num_memory_tokens=1.5), TypeError),
    "seq-start-pos-batch": ErrorCase(
        lambda: lm()(ids(), seq_start_pos=torch.tensor([0, 1, 2])), ValueError
    ),
    "seq-start-pos-negative": ErrorCase(
        lambda: lm()(ids(), seq_start_pos=torch.tensor([0, -1])), ValueError
    ),
    "seq-start-pos-past-end": ErrorCase(
        lambda: lm()(ids(), seq_start_pos=torch.tensor([0, 4])), ValueError
    ),
    "cache-select-range": ErrorCase(lambda: cached(lm()).select(torch.tensor([0, 2])), ValueError),
    "logits-dim-zero": ErrorCase(lambda: small(logits_dim=0), ValueError),
    "only-cross-mems": ErrorCase(
        lambda: small(max_mem_len=4, attn_layers=CrossAttender(depth=1, **DIMS)), ValueError
    ),
    "xl-generate-unknown-keyword": ErrorCase(
        lambda: XLAutoregressiveWrapper(xl_model()).generate(ids(), 2, filter_kwarg={}), TypeError
    ),
    "generate-unknown-keyword": ErrorCase(
        lambda: AutoregressiveWrapper(lm()).generate(ids(), 2, temprature=1.0), TypeError
    ),
}
