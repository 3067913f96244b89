"""T5 relative position bias with log-spaced buckets.

Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer
(Raffel et al., arXiv 1910.10683), section 2.1. Bucket function: mechanisms.md section 14.4.

Shape legend: i query sequence, j key sequence, h heads.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from x_attn.positional.bias import check_positions, heads_first, pairwise
from x_attn.utils import check_positive_int


def _check_bucket_args(causal: bool, num_buckets: int, max_distance: int, owner: str) -> None:
    """Validate bucket hyperparameters (shared by the function and the module)."""
    if not isinstance(causal, bool):
        raise TypeError(f"{owner}: 'causal' must be a bool, got {type(causal).__name__}")
    check_positive_int("num_buckets", num_buckets, owner)
    check_positive_int("max_distance", max_distance, owner)
    smallest = 2 if causal else 4
    if num_buckets < smallest:
        raise ValueError(
            f"{owner}: 'num_buckets' must be >= {smallest} when causal={causal} (half the "
            f"buckets per direction are exact), got {num_buckets}; T5 uses 32"
        )
    max_exact = (num_buckets if causal else num_buckets // 2) // 2
    if max_distance <= max_exact:
        raise ValueError(
            f"{owner}: 'max_distance' ({max_distance}) must exceed the exact range "
            f"({max_exact} for num_buckets={num_buckets}, causal={causal}); T5 uses 128"
        )


def t5_relative_bucket(
    relative_position: Tensor, causal: bool, num_buckets: int = 32, max_distance: int = 128
) -> Tensor:
    """Map relative positions to T5 buckets.

    Distances below ``max_exact`` (half the buckets of a direction) get their own bucket; larger
    ones are log-spaced up to ``max_distance`` and saturate in the last bucket. When not causal,
    the upper half of the buckets holds future keys (``relative_position > 0``); when causal,
    all future keys share bucket 0.

    The log is evaluated in float32, as in the T5 and Hugging Face code, so bucket ids match
    pretrained checkpoints.

    Args:
        relative_position: integer tensor of any shape, ``key_pos - query_pos``.
        causal: unidirectional buckets (decoder) when True, bidirectional (encoder) when False.
        num_buckets: total number of buckets.
        max_distance: distance from which buckets saturate.

    Returns:
        Long tensor of bucket ids in ``[0, num_buckets)``, same shape as ``relative_position``.
    """
    owner = "t5_relative_bucket"
    _check_bucket_args(causal, num_buckets, max_distance, owner)
    if not isinstance(relative_position, Tensor) or relative_position.is_floating_point():
        raise TypeError(
            f"{owner}: 'relative_position' must be an integer tensor (key_pos - query_pos); "
            "convert positions with .long()"
        )
    rel = relative_position.long()
    offset = torch.zeros_like(rel)
    if causal:
        n = (-rel).clamp(min=0)
    else:
        num_buckets //= 2
        offset = (rel > 0).long() * num_buckets
        n = rel.abs()
    max_exact = num_buckets // 2
    # clamp keeps log() finite for n < max_exact; those entries take the exact branch anyway
    ratio = n.clamp(min=max_exact).float() / max_exact
    scaled = torch.log(ratio) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    large = (max_exact + scaled.long()).clamp(max=num_buckets - 1)
    return offset + torch.where(n < max_exact, n, large)


class T5RelativePositionBias(nn.Module):
    """Learned scalar bias per (bucket, head), added to the attention logits.

    Args:
        heads: number of attention heads.
        causal: unidirectional buckets (decoder self-attention) or bidirectional (encoder).
        num_buckets: number of buckets (T5: 32).
        max_distance: saturation distance (T5: 128).
    """

    def __init__(
        self, heads: int, causal: bool, num_buckets: int = 32, max_distance: int = 128
    ) -> None:
        super().__init__()
        owner = "T5RelativePositionBias"
        check_positive_int("heads", heads, owner)
        _check_bucket_args(causal, num_buckets, max_distance, owner)
        self.heads = heads
        self.causal = causal
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def forward(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """Bias for every (query, key) pair.

        Args:
            q_pos: integer query positions: ``(i,)`` (``p0 + arange(i)`` with a cache),
                ``(b, i)`` per sample or ``(b, heads, i)`` per head.
            k_pos: integer key positions in the same layout.

        Returns:
            ``(h, i, j)`` (shared positions) or ``(b, h, i, j)`` float bias with
            ``bias[.., h, a, b] = emb[bucket(k_pos[b] - q_pos[a]), h]``.
        """
        owner = "T5RelativePositionBias"
        for name, pos in (("q_pos", q_pos), ("k_pos", k_pos)):
            check_positions(name, pos, owner, self.heads)
            if pos.is_floating_point():
                raise TypeError(
                    f"{owner}: '{name}' must hold integer positions (T5 buckets integer "
                    f"distances), got {pos.dtype}"
                )
        rel = -pairwise(q_pos, k_pos)  # key - query
        buckets = t5_relative_bucket(rel, self.causal, self.num_buckets, self.max_distance)
        return heads_first(self.relative_attention_bias(buckets), q_pos.ndim)

    def extra_repr(self) -> str:
        return (
            f"heads={self.heads}, causal={self.causal}, num_buckets={self.num_buckets}, "
            f"max_distance={self.max_distance}"
        )
