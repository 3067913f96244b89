"""Reformer LSH attention (Kitaev et al., arXiv 2001.04451): shared query-key, angular hashing.

``attn_lsh=True`` gives a self-attention layer

* a shared-QK projection (:class:`SharedQKProjection`): one projection gives the queries, the
  keys are the unit-normalised queries k_j = q_j / |q_j| (positions applied first, so rotary
  rotates both alike); values have their own projection (``attn_kv_heads`` value heads);
* angular LSH with random rotations (:class:`LSHHasher`): per hash round a Gaussian matrix R
  (d, n_b / 2) and h(x) = argmax([xR ; -xR]). In training the rotations are drawn from torch's
  global generator at every forward (the paper; a reversible stack replays that generator in
  its backward, so the recomputation hashes alike); in eval they come from a generator seeded
  by the layer's ``seed`` buffer (saved with the model), so eval calls are deterministic;
* the mask rule :class:`LSHRule` (kind "lsh"), which hands the kernel the hasher and the sizes;
  only the LSH kernels (:mod:`x_attn.kernels.lsh`) have the "lsh" capability.

The number of buckets n_b is ``attn_lsh_n_buckets``, or per sequence 1 when its real (not
padded) tokens fit in one bucket (n <= bucket size) and otherwise the even number nearest
above n / bucket size; padding therefore changes no hash, and a padded row computes what it
computes alone. Not cacheable: the causal kernel is exactly causal, but the bucket count
follows the length, so a decode step would hash differently from the full forward (and
memories would too); generation runs without a cache (see ``uncacheable``).

Shape legend: b batch, h heads, hv value heads, n positions, d head dim, r hash rounds,
u n_b / 2 rotations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from einops import rearrange
from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureContext, FeatureSpec
from x_attn.attention.projections.base import Projection
from x_attn.attention.projections.latent import latent_input
from x_attn.masks.spec import MaskRule, Span
from x_attn.positional.context import RowPositions
from x_attn.utils import unit_vectors

UNCACHEABLE = (
    "attn_lsh hashes every key with a bucket count set by the sequence's length, so a decode "
    "step (or a segment with memories) would not reproduce the full forward"
)


class LSHHasher(nn.Module):
    """Random rotations of the angular hash: fresh in training, seeded at eval."""

    def __init__(self, n_hashes: int) -> None:
        super().__init__()
        self.n_hashes = n_hashes
        seed = torch.randint(0, 2**31 - 1, (), dtype=torch.int64)  # from the global generator
        self.register_buffer("seed", seed)

    def rotations(self, dim: int, n_buckets: int, device: torch.device, dtype) -> Tensor:
        """(r, d, u) Gaussian rotations for ``n_buckets`` (even) buckets."""
        shape = (self.n_hashes, dim, n_buckets // 2)
        if self.training:
            return torch.randn(shape, dtype=torch.float64).to(device, dtype)
        generator = torch.Generator().manual_seed(int(self.seed) + n_buckets)
        return torch.randn(shape, generator=generator, dtype=torch.float64).to(device, dtype)

    def buckets(self, keys: Tensor, n_buckets: list[int]) -> Tensor:
        """(b, h, n, d) keys -> (b, h, r, n) bucket ids, row b in [0, n_buckets[b])."""
        b, h, n, _ = keys.shape
        out = keys.new_zeros(b, h, self.n_hashes, n, dtype=torch.long)
        for count in sorted(set(n_buckets) - {1}):  # one bucket: every id is 0
            rows = torch.tensor([c == count for c in n_buckets], device=keys.device)
            rot = self.rotations(keys.shape[-1], count, keys.device, keys.dtype)
            with torch.no_grad():  # integer ids: no gradient, nothing for autograd to keep
                projected = torch.einsum("bhnd,rdu->bhrnu", keys[rows], rot)
                out[rows] = _argmax_antipodal(projected)
        return out


def _argmax_antipodal(x: Tensor) -> Tensor:
    """argmax([x ; -x]) over the last dim (u), ties to the first, without forming [x ; -x]:
    with u = n_b / 2 growing with n, that (n, n_b) tensor and its negation were the
    largest buffers of the layer past 8k tokens."""
    top, low = x.argmax(dim=-1, keepdim=True), x.argmin(dim=-1, keepdim=True)
    up = x.gather(-1, top) >= -x.gather(-1, low)
    return torch.where(up, top, low + x.shape[-1]).squeeze(-1)


@dataclass(frozen=True, eq=False)
class LSHRule(MaskRule):
    """Which keys a query may see is decided by hashing (read by the LSH kernels only).

    Attributes:
        hasher: the layer's rotations.
        bucket_size: chunk length c of the sorted sequence.
        n_buckets: fixed bucket count, or None for one from each call's length.
    """

    kind: ClassVar[str] = "lsh"
    hasher: LSHHasher
    bucket_size: int
    n_buckets: int | None

    def buckets_for(self, n: int) -> int:
        """The bucket count of a sequence of ``n`` real (not padded) keys."""
        if self.n_buckets is not None:
            return self.n_buckets
        return 1 if n <= self.bucket_size else 2 * math.ceil(n / (2 * self.bucket_size))

    def allows(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        raise AssertionError("the LSH pattern depends on the keys' hashes, not on positions")

    def hides_nothing(self, q: Span, k: Span) -> bool:
        return False  # a query sees itself only when nothing else is there


class SharedQKProjection(Projection):
    """q (b h i d) from one projection; payload (k, v) with k = q / |q| and v (b hv j d)."""

    qk_dim_options = ("dim_head",)

    def __init__(self, ctx: FeatureContext) -> None:
        super().__init__()
        cfg = ctx.config
        kv_heads = cfg.key_value_heads(ctx.heads)
        self.heads, self.k_heads, self.v_heads = ctx.heads, ctx.heads, kv_heads
        self.qk_dim = self.v_dim = cfg.dim_head
        self.to_latent_q = latent_input(ctx.dim, cfg.dim_latent_q)
        self.to_q = nn.Linear(cfg.dim_latent_q or ctx.dim, ctx.heads * cfg.dim_head, bias=False)
        self.to_v = nn.Linear(ctx.dim, kv_heads * cfg.dim_head, bias=False)
        self.hasher = LSHHasher(cfg.lsh_n_hashes)

    def queries(self, x: Tensor, pos: RowPositions) -> Tensor:
        q = self.to_q(self.to_latent_q(pos.infuse(x)))
        return self.finish_queries(rearrange(q, "b n (h d) -> b h n d", h=self.heads), pos)

    def keys(self, x: Tensor, pos: RowPositions) -> tuple[Tensor, Tensor]:
        k = unit_vectors(self.queries(x, pos))  # shared QK: the unit queries
        v = rearrange(self.to_v(x), "b n (h d) -> b h n d", h=self.v_heads)
        return k, v


def _projection(ctx: FeatureContext) -> SharedQKProjection:
    cfg = ctx.config
    refused = [
        (name, why)
        for name, on, why in (
            (
                "dropout",
                cfg.dropout > 0,
                "drops weights of the dense softmax, which LSH never forms",
            ),
            ("num_mem_kv", cfg.num_mem_kv > 0, "adds keys that no query hashes to"),
            ("add_zero_kv", cfg.add_zero_kv, "adds a key that no query hashes to"),
            ("head_learned_sink", cfg.head_learned_sink, "adds a key no query hashes to"),
        )
        if on
    ]
    for name, why in refused:
        raise ValueError(
            f"Attention: {ctx.flag(name)} with {ctx.flag('lsh')}: it {why}; drop one of them"
        )
    return SharedQKProjection(ctx)


def _rule(ctx: FeatureContext) -> LSHRule:
    proj = ctx.projection
    if not isinstance(proj, SharedQKProjection):  # wrapped: a feature map of linear attention
        raise ValueError(
            f"Attention: {ctx.flag('lsh')} with a feature map (attn_linear_attn / "
            "attn_performer): LSH hashes and attends with softmax over shared query-keys, which "
            "a feature map replaces; choose one"
        )
    return LSHRule(proj.hasher, ctx.config.lsh_bucket_size, ctx.config.lsh_n_buckets)


LSH_SPEC = FeatureSpec(
    "lsh",
    "2001.04451",
    "project",
    enabled=lambda ctx: ctx.config.lsh and ctx.prefix == "attn_",
    build=_projection,
    slot="projection",
    rules=lambda ctx: (_rule(ctx),),
    needs=("lsh",),
    uncacheable=UNCACHEABLE,
)
