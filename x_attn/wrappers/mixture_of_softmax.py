"""Mixture of Softmaxes output head (Yang et al., "Breaking the Softmax Bottleneck: A High-Rank
RNN Language Model", arXiv 1711.03953).

One softmax over ``h W^T`` gives a log-probability matrix of rank at most d + 1 over all
contexts; a mixture of k softmaxes does not have that limit:

    P(v | h) = sum_k pi_k(h) softmax(logits(h_k))_v,   h_k = W_k h,   pi(h) = softmax(w_pi h)

where ``logits`` is the model's own output head (linear or tied embedding). The head returns
log P, so it drops in wherever logits are read (cross-entropy and sampling renormalise, and
log P is already normalised). As in x-transformers, the component projections W_k are linear
(the paper adds a tanh) and no map has a bias.

Shape legend: b batch, n sequence, d model dim, k components, v vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange
from torch import Tensor, nn

from x_attn.utils import check_positive_int

__all__ = ["MixtureOfSoftmax"]


class MixtureOfSoftmax(nn.Module):
    """k component contexts and their mixture weights; ``forward`` returns log-probabilities.

    Args:
        dim: model width d.
        k: number of softmax components (>= 1).
    """

    def __init__(self, dim: int, k: int) -> None:
        super().__init__()
        check_positive_int("mixture_of_softmax_k", k, "TransformerWrapper")
        self.k = k
        self.to_mixture = nn.Linear(dim, k * dim, bias=False)
        self.combine_mixture = nn.Linear(dim, k, bias=False)

    def forward(self, h: Tensor, head: Callable[[Tensor], Tensor]) -> Tensor:
        """(..., d) -> (..., v) log P, with ``head`` the model's logits of a (..., k, d) input."""
        contexts = rearrange(self.to_mixture(h), "... (k d) -> ... k d", k=self.k)
        logits = head(contexts)  # (..., k, v), in the head's dtype (autocast's under autocast)
        dtype = torch.promote_types(logits.dtype, torch.float32)  # half precision sums in float32
        log_components = logits.to(dtype).log_softmax(dim=-1)
        log_weights = self.combine_mixture(h).to(dtype).log_softmax(dim=-1)  # (..., k)
        mixed = (log_weights.unsqueeze(-1) + log_components).logsumexp(dim=-2)
        return mixed.to(logits.dtype)
