"""QK-clip of MuonClip (Kimi Team, Kimi K2, arXiv 2507.20534) and the Muon parameter groups.

QK-clip runs after an optimiser step. For every head h of a layer it takes the largest attention
logit of the last forward, ``S_h = max_{i,j} scale * q_i . k_j`` over the (query, key) pairs the
mask allows, and with ``gamma_h = min(1, tau / S_h)`` rescales the head's query and key maps:
``W_q^h <- sqrt(gamma_h) W_q^h``, ``W_k^h <- sqrt(gamma_h) W_k^h`` (their biases alike), so the
head's logits on the same input scale by ``gamma_h``: a head over ``tau`` comes back to ``tau``,
the others are left as they were. A key head shared by a group of query heads (grouped-query
attention) serves heads with different ``gamma``; there the whole factor goes on the query rows
of each head (``W_q^h <- gamma_h W_q^h``), which scales the same logits. Only the keys the
layer's key map projects are counted (not memory or caller-given keys without positions) and
position biases are not part of ``q . k``.

Muon (Jordan et al. 2024, at scale: Liu et al., arXiv 2502.16982) orthogonalises the updates of
hidden weight matrices. ``muon_parameters`` names the matrices of a layer to give it, as
x-transformers does: an attention layer's value and output maps (its query and key maps are the
ones QK-clip rescales), every linear map of a feed-forward block.

Shape legend: b batch, h query heads, hk key heads, i queries, j keys, dh head dim.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from einops import einsum, reduce, repeat
from torch import Tensor, nn

from x_attn.attention.projections.multihead import MultiHeadProjection
from x_attn.kernels.inputs import AttnInputs

if TYPE_CHECKING:
    from x_attn.attention.attention import Attention, AttnIntermediates

QUERY_CHUNK = 256  # query rows per block when taking the logit maxima


def qk_logit_max(inputs: AttnInputs) -> Tensor:
    """(h,) the largest ``scale * q . k`` of each head over the allowed pairs of the positional
    keys (-inf for a head that attends to none)."""
    spec = inputs.spec
    free = spec.free if spec is not None else 0
    q, k = inputs.q.detach().float(), inputs.k[:, :, free:].detach().float()
    k = repeat(k, "b hk j d -> b (hk g) j d", g=q.shape[1] // k.shape[1])
    cols = torch.arange(free, free + k.shape[2], device=q.device)
    best = torch.full((q.shape[1],), float("-inf"), device=q.device)
    for start in range(0, q.shape[2], QUERY_CHUNK):
        rows = torch.arange(start, min(start + QUERY_CHUNK, q.shape[2]), device=q.device)
        logits = einsum(q[:, :, rows], k, "b h i d, b h j d -> b h i j") * inputs.scale
        allowed = None if spec is None else spec.block(rows, cols)
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        best = torch.maximum(best, reduce(logits, "b h i j -> h", "max"))
    return best


def head_logit_max(found: AttnIntermediates | Tensor) -> Tensor:
    """(h,) per-head logit maxima from a layer's intermediates, or from its (b, h, i, j) logits
    before the softmax (masked pairs must hold -inf or a large negative value)."""
    if isinstance(found, Tensor):
        if found.ndim != 4:
            raise ValueError(
                f"qk_clip_: logits must be (b, h, i, j), got shape {tuple(found.shape)}"
            )
        return reduce(found.detach().float(), "b h i j -> h", "max")
    if getattr(found, "inputs", None) is None:
        raise ValueError(
            "qk_clip_: these intermediates carry no attention inputs; pass the intermediates "
            "of a forward with return_intermediates=True"
        )
    return qk_logit_max(found.inputs)


@torch.no_grad()
def qk_clip_(layer: Attention, found: AttnIntermediates | Tensor, tau: float = 100.0) -> Tensor:
    """Rescale ``layer``'s query/key maps in place so no head's logit maximum exceeds ``tau``;
    returns the per-head factors ``gamma`` (h,) applied to the logits."""
    if not (isinstance(tau, int | float) and not isinstance(tau, bool) and tau > 0):
        raise ValueError(f"qk_clip_: 'tau' must be a number > 0, got {tau!r}")
    proj = layer.proj
    if type(proj) is not MultiHeadProjection or proj.head_transforms:
        raise ValueError(
            "qk_clip_ rescales the query and key maps of plain multi-head dot-product "
            f"attention; this layer's {type(proj).__name__} "
            f"{'normalises its heads' if proj.head_transforms else 'forms them otherwise'}, "
            "so scaling its weights does not bound its logits"
        )
    best = head_logit_max(found).to(proj.to_q.weight.device)
    if best.numel() != proj.heads:
        raise ValueError(f"qk_clip_: {best.numel()} heads given, the layer has {proj.heads}")
    gamma = (tau / best.clamp(min=torch.finfo(best.dtype).tiny)).clamp(max=1.0)
    grouped = proj.k_heads != proj.heads
    _scale_rows(proj.to_q, gamma if grouped else gamma.sqrt(), proj.heads)
    if not grouped:
        _scale_rows(proj.to_k, gamma.sqrt(), proj.heads)
    return gamma


def _scale_rows(linear: nn.Linear, per_head: Tensor, heads: int) -> None:
    """Multiply the output rows of each head of ``linear`` (heads * dh rows) by its factor."""
    rows = repeat(per_head, "h -> (h d)", d=linear.out_features // heads)
    linear.weight.mul_(rows.unsqueeze(-1).to(linear.weight.dtype))
    if linear.bias is not None:
        linear.bias.mul_(rows.to(linear.bias.dtype))


def linear_weights(module: nn.Module) -> Iterator[nn.Parameter]:
    """The weight matrix of every linear map in ``module``."""
    return (m.weight for m in module.modules() if isinstance(m, nn.Linear))


def attention_muon_parameters(layer: Attention) -> list[nn.Parameter]:
    """The value map(s) and the output stage's matrices of an attention layer."""
    values = getattr(layer.proj, "to_v", None)
    if values is None:
        raise ValueError(
            f"muon_parameters: this layer's {type(layer.proj).__name__} has no separate value "
            "map; choose its matrices by hand"
        )
    return [*linear_weights(values), *linear_weights(layer.to_out)]
