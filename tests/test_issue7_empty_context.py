"""Issue 7: an empty context is not an error (the mistakes that are errors are checked row
by row against docs/errors.md in tests/test_errors_doc.py).

Shape legend: b batch, n sequence, j context length, d model dim.
"""

from __future__ import annotations

import pytest
import torch
from error_cases import DIMS, ids

from x_attn import Decoder, TransformerWrapper


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
