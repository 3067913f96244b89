"""Input-embedding options of the sequence wrappers (x-transformers flag names).

* ``l2norm_embed``: token and learned position embeddings are L2-normalised, each vector to
  unit norm (with small initialisation), as in "Transformers without Tears" / the x-transformers
  option (Nguyen & Salazar, arXiv 1910.05895, section 2.3 "FixNorm").
* ``post_emb_norm``: a LayerNorm (gain, no bias) right after the summed input embeddings.
* ``emb_frac_gradient``: the forward value is unchanged but only a fraction ``alpha`` of the
  gradient reaches the embeddings: ``alpha * x + (1 - alpha) * stop_gradient(x)`` (CogView,
  Ding et al., arXiv 2105.13290, "Sandwich-LN and embedding gradient shrink").
* ``prepend_embeds`` / ``prepend_mask``: embeddings (for example image features, as in PaLI)
  placed before the sequence, after its positions and before the stack.

Shape legend: b batch, n sequence, p prepended positions, d embedding dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from x_attn.utils import unit_vectors
from x_attn.validation_inputs import check_bool_mask


def l2norm(t: Tensor) -> Tensor:
    """Each vector of the last axis scaled to unit L2 norm (the norm in float32 for halves)."""
    return unit_vectors(t)


def zero_masked(t: Tensor, mask: Tensor | None) -> Tensor:
    """``t`` (b, n, d) with the positions ``mask`` (b, n) marks False set to zero.

    Padding then has no effect whatever it holds: a NaN left there would otherwise reach
    every output through 0 * NaN in the attention weights (and the gradients of the layers
    it passes through).
    """
    return t if mask is None else t.masked_fill(~mask.unsqueeze(-1), 0.0)


def frac_gradient(t: Tensor, frac: float) -> Tensor:
    """``t`` in the forward pass; ``frac`` times its gradient in the backward pass."""
    if frac >= 1.0:
        return t
    return t * frac + t.detach() * (1.0 - frac)


def check_frac(frac: float, owner: str) -> None:
    if isinstance(frac, bool) or not isinstance(frac, (int, float)):
        raise TypeError(f"{owner}: 'emb_frac_gradient' must be a float, got {frac!r}")
    if not 0.0 < frac <= 1.0:
        raise ValueError(
            f"{owner}: 'emb_frac_gradient' must be in (0, 1] (the fraction of the gradient "
            f"that reaches the embeddings), got {frac}"
        )


def check_prepend(
    embeds: Tensor | None, embeds_mask: Tensor | None, b: int, d: int, owner: str
) -> None:
    """``prepend_embeds`` (b, p, d) float and ``prepend_mask`` (b, p) bool, or None."""
    if embeds is None:
        if embeds_mask is not None:
            raise ValueError(f"{owner}: 'prepend_mask' given without 'prepend_embeds'")
        return
    if not isinstance(embeds, Tensor) or not embeds.is_floating_point():
        raise TypeError(f"{owner}: 'prepend_embeds' must be a float tensor (batch, p, {d})")
    if embeds.ndim != 3 or embeds.shape[0] != b or embeds.shape[2] != d:
        raise ValueError(
            f"{owner}: 'prepend_embeds' must have shape (batch={b}, p, dim={d}), got "
            f"{tuple(embeds.shape)}"
        )
    check_bool_mask(
        "prepend_mask", embeds_mask, tuple(embeds.shape[:2]), "batch x p, True = real position"
    )


def stream_mask(
    mask: Tensor | None, n: int, prepend_mask: Tensor | None, p: int, b: int, device
) -> Tensor | None:
    """(b, p + n) mask of prepended + sequence positions, None when nothing is masked."""
    if mask is None and prepend_mask is None:
        return None
    ones = torch.ones(b, max(p, n), dtype=torch.bool, device=device)
    parts = [prepend_mask if prepend_mask is not None else ones[:, :p]] if p else []
    parts.append(mask if mask is not None else ones[:, :n])
    return torch.cat(parts, dim=1)
