"""Issue 7, crashes and unclear errors: each mistake gets a ValueError / TypeError that names
the argument (triggers in tests/error_cases.py), and an empty context is not an error.

Shape legend: b batch, n sequence, j context length, d model dim.
"""

from __future__ import annotations

import pytest
import torch
from error_cases import CASES, DIMS, ids

from x_attn import Decoder, TransformerWrapper

MESSAGES = {
    "context-width": "'context' must have shape (batch, seq, 16)",
    "cache-type": "'cache' must be a KVCache",
    "cache-batch": "'cache' holds batch 2, but the input has batch 3",
    "cache-layers": "'cache' holds 1 attention layers, but this stack has 2",
    "mems-dtype": "'mems' must hold torch.float32 tensors like the input",
    "mems-not-tensors": "'mems' must be a list of 2 tensors",
    "num-memory-tokens-negative": "'num_memory_tokens' must be >= 0",
    "num-memory-tokens-float": "'num_memory_tokens' must be an int",
    "seq-start-pos-batch": "'seq_start_pos' must have shape (batch=2,)",
    "seq-start-pos-negative": "'seq_start_pos' must lie in [0, 4)",
    "seq-start-pos-past-end": "'seq_start_pos' must lie in [0, 4)",
    "cache-select-range": "KVCache.select: 'index' must lie in [-2, 2)",
    "logits-dim-zero": "'logits_dim' must be >= 1",
    "only-cross-mems": "max_mem_len (Transformer-XL memories) needs self-attention layers",
    "xl-generate-unknown-keyword": (
        "unknown argument 'filter_kwarg' for XLAutoregressiveWrapper.generate; "
        "did you mean 'filter_kwargs'?"
    ),
    "generate-unknown-keyword": (
        "unknown argument 'temprature' for AutoregressiveWrapper.generate; "
        "did you mean 'temperature'?"
    ),
}


@pytest.mark.parametrize("name", list(MESSAGES))
def test_mistake_raises_clear_error(name):
    case = CASES[name]
    with pytest.raises(Exception) as info:
        case.trigger()
    assert type(info.value) is case.error, f"{type(info.value).__name__}: {info.value}"
    assert MESSAGES[name] in str(info.value)


@pytest.mark.parametrize("flags", [{}, {"cross_attn_flash": False}, {"attn_use_entmax15": True}])
def test_empty_context_attends_to_nothing(flags):
    """A context of length 0 gives the cross-attention nothing to read: zeros, as a context
    whose every position is masked does (same model, same input)."""
    torch.manual_seed(0)
    layers = Decoder(depth=2, cross_attend=True, **DIMS, **flags)
    model = TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=layers).double().eval()
    empty = model(ids(), context=torch.zeros(2, 0, 16, dtype=torch.float64))
    context = torch.randn(2, 3, 16, dtype=torch.float64)
    hidden = torch.zeros(2, 3, dtype=torch.bool)
    expected = model(ids(), context=context, context_mask=hidden)
    assert torch.isfinite(empty).all()
    torch.testing.assert_close(empty, expected, atol=1e-12, rtol=0)
