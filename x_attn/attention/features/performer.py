"""Performer FAVOR+ (Choromanski et al., arXiv 2009.14794): softmax attention by random features.

exp(q . k / sqrt(d)) = E_w[phi(q') phi(k')] with q' = q d^(-1/4), k' = k d^(-1/4) and the
positive features phi(x) = exp(W x - |x|^2 / 2) / sqrt(m), w ~ N(0, I_d). The m rows of W are
drawn in blocks of d orthogonal directions (QR of a Gaussian matrix, with the sign fix
Q diag(sign(diag R)) of Mezzadri, math-ph/0609050: without it LAPACK's sign convention makes
the directions non-uniform and the estimate biased), each row with the length of a fresh
Gaussian row. The features then go through the linear kernel (:mod:`x_attn.kernels.linear`),
causal by prefix sums, decoding with the same running state as linear attention.

Stabilisers (constant factors that cancel between numerator and denominator): a query row is
divided by its own largest feature; every key by exp(max_i |w_i|^2 / 2), a bound of its
features that depends on W only (exp(w.x - |x|^2/2) <= exp(|w|^2/2)), so no key's features
depend on other (future) keys. W is a buffer (saved with the model). In training it is redrawn
every ``performer_redraw_interval`` forward calls; in eval it is frozen (decode in eval mode: a
redraw would invalidate a running state).

Shape legend: b batch, h heads, n positions, d head dim, m features.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from x_attn.attention.features.linear_attn import state_entry, wrap_with
from x_attn.attention.features.spec import FeatureContext, FeatureSpec
from x_attn.attention.projections.base import Projection
from x_attn.attention.projections.feature_map import FeatureMap
from x_attn.utils import compute_dtype


def orthogonal_gaussian(m: int, d: int, generator: torch.Generator | None = None) -> Tensor:
    """(m, d) rows in blocks of d orthogonal, uniformly distributed directions, Gaussian lengths."""
    blocks = []
    for _ in range(math.ceil(m / d)):
        q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # the sign fix: Haar-uniform Q
        blocks.append(q.T)
    rows = torch.cat(blocks)[:m]
    lengths = torch.randn(m, d, generator=generator, dtype=torch.float64).norm(dim=-1)
    return rows * lengths.unsqueeze(-1)


class FavorFeatureMap(FeatureMap):
    """Positive orthogonal random features of the softmax kernel (FAVOR+)."""

    def __init__(self, dim_head: int, nb_features: int, redraw_interval: int | None) -> None:
        super().__init__()
        self.dim_head, self.nb_features = dim_head, nb_features
        self.redraw_interval = redraw_interval
        self.register_buffer("projection", orthogonal_gaussian(nb_features, dim_head).float())
        self.calls = 0  # training forward calls since the last draw

    def redraw(self) -> None:
        """Draw new features (from torch's global generator)."""
        fresh = orthogonal_gaussian(self.nb_features, self.dim_head)
        self.projection.copy_(fresh.to(self.projection.dtype))
        self.calls = 0

    def forward(self, x: Tensor, is_query: bool) -> Tensor:
        if is_query and self.training:
            if self.redraw_interval is not None and self.calls >= self.redraw_interval:
                self.redraw()
            self.calls += 1
        compute = compute_dtype(x.dtype)
        w = self.projection.to(compute)
        x = x.to(compute) * self.dim_head**-0.25
        # W x - |x|^2 / 2 as one product, [x, -|x|^2 / 2] [W, 1]^T, then in place: every
        # further (..., m) temporary, forward or backward, would be another buffer of the
        # feature size to allocate and touch (32 MiB per 8k positions at d = 64)
        x = torch.cat((x, (x * x).sum(-1, keepdim=True) / -2), dim=-1)
        log = x @ torch.cat((w, w.new_ones(w.shape[0], 1)), dim=-1).T
        if is_query:
            shift = log.amax(dim=-1, keepdim=True).detach()
        else:
            shift = (w * w).sum(-1).max() / 2
        return log.sub_(shift + math.log(self.nb_features) / 2).exp_()  # / sqrt(m) in the shift


def _feature_map(ctx: FeatureContext, inner: Projection) -> FavorFeatureMap:
    d = inner.qk_dim
    m = ctx.config.performer_nb_features or max(1, int(d * math.log(d)))
    return FavorFeatureMap(d, m, ctx.config.performer_redraw_interval)


PERFORMER_SPEC = FeatureSpec(
    "performer",
    "2009.14794",
    "project",
    enabled=lambda ctx: ctx.config.performer,
    slot="feature_map",
    wrap_projection=lambda ctx: wrap_with(ctx, "performer", _feature_map),
    cache_entry=state_entry,
    needs=("cache:state",),
)
