"""One trigger per row of docs/errors.md: the user-facing errors of issue 7.

Each trigger builds a tiny model and makes the mistake its row describes; tests/test_errors_doc.py
checks that it raises the row's exception with the row's message. The keys are the first
column of docs/errors.md (the test checks both directions).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from x_attn import (
    AutoregressiveWrapper,
    CrossAttender,
    Decoder,
    Encoder,
    TransformerWrapper,
    XLAutoregressiveWrapper,
)
from x_attn.cache import KVCache, Mems
from x_attn.layers.stack import LayerIntermediates

DIMS = dict(dim=16, heads=2, attn_dim_head=8)
# collaborative heads whose shared query/key dim rounds to 1 (0.25 x 1 head x 4 dims)
ONE_DIM_QK_HEAD = dict(
    dim=16, heads=1, attn_dim_head=4, attn_collab_heads=True, attn_collab_compression=0.25
)


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


def _cache_whole_sequence():
    model, x = lm(), ids(2, 6)
    _, cache = model(x[:, :4], return_cache=True)
    model(x, cache=cache, return_cache=True)


def _cache_too_short():
    model = lm()
    _, inter = model(ids(), return_intermediates=True)
    model(ids(), cache=inter)


def _cache_does_not_continue():
    model = lm()
    _, inter = model(ids(), return_intermediates=True)
    model((ids(2, 6) + 1) % 10, cache=inter)


def _mems_with_filled_cache():
    model, mems = xl_mems()
    _, cache = model(ids(2, 2), mems=mems, return_cache=True)
    model(ids(2, 1), mems=mems, cache=cache, return_cache=True)


def _mems_mask_shape():
    model, mems = xl_mems()
    model(ids(), mems=Mems(list(mems), torch.ones(2, 3, dtype=torch.bool)))


def _cache_batch():
    model = lm()
    model(ids(3, 1), cache=cached(model, b=2))


def _cache_layers():
    model = lm()
    model(ids(2, 1), cache=cached(lm(depth=1)))


CASES: dict[str, Callable[[], object]] = {
    "context-width": lambda: lm(cross_attend=True)(ids(), context=torch.randn(2, 3, 12)),
    "cache-type": lambda: lm()(ids(), cache={"k": None}),
    "cache-batch": _cache_batch,
    "cache-layers": _cache_layers,
    # issue 7.10 / x-transformers cache protocol: a cache is a value
    "cache-not-returned": lambda: lm()(ids(2, 1), cache=cached(lm())),
    "cache-not-returned-stack": lambda: Decoder(depth=2, **DIMS)(
        torch.randn(2, 1, 16), cache=KVCache.empty(2)
    ),
    "cache-whole-sequence": _cache_whole_sequence,
    "cache-sequence-too-short": _cache_too_short,
    "cache-does-not-continue": _cache_does_not_continue,
    "cache-intermediates-without-cache": lambda: lm()(ids(), cache=LayerIntermediates()),
    "cache-uncacheable-stack": lambda: Decoder(depth=2, reversible=True, **DIMS)(
        torch.randn(2, 1, 16), cache=KVCache.empty(2), return_hiddens=True
    ),
    "input-not-include-cache-type": lambda: small(input_not_include_cache="yes"),
    "mems-with-filled-cache": _mems_with_filled_cache,
    "mems-mask-shape": _mems_mask_shape,
    "seq-start-pos-negative-stream": lambda: lm()(
        ids(), seq_start_pos=torch.tensor([0, -1]), return_cache=True
    ),
    "mems-dtype": _mems_dtype,
    "mems-not-tensors": _mems_not_tensors,
    "num-memory-tokens-negative": lambda: small(num_memory_tokens=-1),
    "num-memory-tokens-float": lambda: small(num_memory_tokens=1.5),
    "seq-start-pos-batch": lambda: lm()(ids(), seq_start_pos=torch.tensor([0, 1, 2])),
    "seq-start-pos-negative": lambda: lm()(ids(), seq_start_pos=torch.tensor([0, -1])),
    "seq-start-pos-past-end": lambda: lm()(ids(), seq_start_pos=torch.tensor([0, 4])),
    "cache-select-range": lambda: cached(lm()).select(torch.tensor([0, 2])),
    "logits-dim-zero": lambda: small(logits_dim=0),
    "only-cross-mems": lambda: small(max_mem_len=4, attn_layers=CrossAttender(depth=1, **DIMS)),
    "xl-generate-unknown-keyword": lambda: XLAutoregressiveWrapper(xl_model()).generate(
        ids(), 2, filter_kwarg={}
    ),
    "generate-unknown-keyword": lambda: AutoregressiveWrapper(lm()).generate(
        ids(), 2, temprature=1.0
    ),
    # issue 7.7: a 'c' layer is cross-attention
    "custom-cross-no-context": lambda: Decoder(depth=1, custom_layers=("a", "c", "f"), **DIMS)(
        torch.randn(1, 4, 16)
    ),
    "custom-layers-without-c": lambda: Encoder(
        depth=1, cross_attend=True, custom_layers=("a", "f"), **DIMS
    ),
    "only-cross-with-a": lambda: Encoder(
        depth=1, only_cross=True, custom_layers=("a", "c", "f"), **DIMS
    ),
    # issue 7.8: flags acting on self-attention, in a stack without one
    "no-self-attention-rotary": lambda: CrossAttender(depth=1, rotary_pos_emb=True, **DIMS),
    "no-self-attention-t5": lambda: CrossAttender(depth=1, rel_pos_bias=True, **DIMS),
    "no-self-attention-alibi": lambda: CrossAttender(depth=1, alibi_pos_bias=True, **DIMS),
    "no-self-attention-infused": lambda: CrossAttender(depth=1, position_infused_attn=True, **DIMS),
    "no-self-attention-residual": lambda: CrossAttender(depth=1, residual_attn=True, **DIMS),
    "no-self-attention-causal": lambda: Decoder(depth=1, only_cross=True, **DIMS),
    "no-self-attention-custom-decoder": lambda: Decoder(dim=16, depth=1, custom_layers=("f", "f")),
    # fuzzer: an option no layer of the stack reads
    "ff-options-without-ff": lambda: Decoder(
        depth=2, custom_layers=("a", "a"), ff_glu=True, **DIMS
    ),
    "attn-options-without-attention": lambda: Encoder(depth=1, custom_layers=("f", "f"), **DIMS),
    "cross-attn-options-without-c": lambda: Decoder(depth=1, cross_attn_num_mem_kv=2, **DIMS),
    "rotary-one-dim-head": lambda: Decoder(depth=1, rotary_pos_emb=True, **ONE_DIM_QK_HEAD),
    # issue 7.11
    "autoregressive-non-causal": lambda: AutoregressiveWrapper(
        small(attn_layers=Encoder(depth=1, **DIMS))
    ),
    # x-transformers input conventions
    "token-ids-non-integral": lambda: lm()(ids().double() + 0.5),
    "attn-mask-shape": lambda: lm()(ids(), attn_mask=torch.ones(3, 4, 4, dtype=torch.bool)),
    # issue 9: block-sparse patterns
    "bigbird-causal": lambda: Decoder(depth=1, attn_bigbird=True, **DIMS),
    "sparse-option-without-pattern": lambda: Decoder(depth=1, attn_sparse_block=16, **DIMS),
    "sparse-summary-too-large": lambda: Decoder(
        depth=1, attn_sparse_pattern="fixed", attn_sparse_block=4, attn_sparse_summary=8, **DIMS
    ),
    # issue 9: Reformer LSH attention
    "lsh-option-without-lsh": lambda: Decoder(depth=1, attn_lsh_bucket_size=32, **DIMS),
    "lsh-odd-buckets": lambda: Decoder(depth=1, attn_lsh=True, attn_lsh_n_buckets=3, **DIMS),
    "lsh-cross-attention": lambda: Encoder(depth=1, cross_attend=True, cross_attn_lsh=True, **DIMS),
    "lsh-attn-mask": lambda: lm(attn_lsh=True)(ids(), attn_mask=torch.ones(4, 4, dtype=torch.bool)),
    "linformer-decoder": lambda: Decoder(
        depth=1, attn_linformer=True, attn_linformer_k=4, attn_linformer_max_seq_len=8, **DIMS
    ),
    "linformer-no-max-len": lambda: Encoder(depth=1, attn_linformer=True, **DIMS),
    "linformer-too-long": lambda: TransformerWrapper(
        num_tokens=10,
        max_seq_len=16,
        attn_layers=Encoder(
            depth=1, attn_linformer=True, attn_linformer_k=4, attn_linformer_max_seq_len=8, **DIMS
        ),
    )(torch.zeros(1, 9, dtype=torch.long)),
    "lsh-cache": lambda: Decoder(depth=1, attn_lsh=True, **DIMS)(
        torch.randn(2, 1, 16), cache=KVCache.empty(1), return_hiddens=True
    ),
}
