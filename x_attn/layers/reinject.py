"""Input injection (x-transformers' ``reinject_input``): every layer's block reads the stack's
input again, as looped / recurrent-depth models feed the input embedding to every iteration
(Prairie et al., "Parcae: Scaling Laws For Stable Looped Language Models", arXiv 2604.12946).

With ``x0`` the stack's input and ``x`` the stream entering a layer, the block reads
``x + g * P x0`` (through the layer's pre-norm), while the residual still adds to ``x``::

    inj = P x0                     P: a learned (d, d) linear map without bias
    g   = sigmoid(w . x0)          learned_reinject_input_gate (else g = 1), one per token
    out = x + block(norm(x + g * inj))

The injection is per position, so causality, padding and the KV cache are unaffected.
Transformer-XL memories hold the stream (not the injected input of earlier rows), so a stack
with it refuses them.

Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

MEMS_REASON = (
    "reinject_input adds the stack's input of each row to every block's input, which "
    "Transformer-XL memories (the stream of earlier rows) do not hold"
)


def build_reinject(dim: int, on: bool, gated: bool) -> tuple[nn.Module | None, nn.Module | None]:
    """(projection P, gate w) of ``reinject_input`` / ``learned_reinject_input_gate``."""
    if not on:
        return None, None
    gate = nn.Linear(dim, 1, bias=False) if gated else None
    return nn.Linear(dim, dim, bias=False), gate


def injection(x0: Tensor, proj: nn.Module | None, gate: nn.Module | None) -> Tensor | None:
    """``g * P x0`` (b, n, d) for the stack input ``x0`` (b, n, d), or None without it."""
    if proj is None:
        return None
    inj = proj(x0)
    return inj if gate is None else torch.sigmoid(gate(x0)) * inj
