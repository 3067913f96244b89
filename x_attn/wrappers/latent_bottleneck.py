"""Latent bottlenecks of the ContinuousTransformerAutoencoder (:mod:`.continuous_autoencoder`).

A bottleneck maps the pooled encoder output (b, d) to a latent (b, l) and returns, per row, an
auxiliary loss (b,) or None:

* :class:`DeterministicLatentBottleneck`: a linear map and an optional activation (e.g. Tanh to
  bound the latent); no auxiliary loss.
* :class:`VariationalLatentBottleneck`: the Gaussian posterior of the variational autoencoder
  (Kingma & Welling, "Auto-Encoding Variational Bayes", arXiv 1312.6114). A linear map gives the
  mean mu and log-variance of q(z | x) = N(mu, diag(sigma^2)); while training z = mu + sigma * eps
  (the reparameterisation trick), in eval mode z = mu. The auxiliary loss is the closed-form
  KL(q || N(0, I)) = 0.5 * sum_l (mu^2 + sigma^2 - 1 - log sigma^2) per row; ``kl_div_floor``
  raises it to at least that value per row ("free bits", Kingma et al., arXiv 1606.04934), so
  the latent may carry that many nats at no cost.

Shape legend: b batch, d model dim, l latent dim.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from x_attn.utils import check_nonnegative, check_positive_int

__all__ = ["DeterministicLatentBottleneck", "VariationalLatentBottleneck", "gaussian_kl"]


def gaussian_kl(mean: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)) per row: (b, l) -> (b,)."""
    return 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var).sum(dim=-1)


class DeterministicLatentBottleneck(nn.Module):
    """(b, d) -> (b, l): ``activation(Linear(x))``; no auxiliary loss.

    Args:
        dim: input width d.
        dim_latent: latent width l.
        activation: a module applied after the linear map (None: none).
    """

    def __init__(self, dim: int, dim_latent: int, activation: nn.Module | None = None) -> None:
        super().__init__()
        owner = "DeterministicLatentBottleneck"
        check_positive_int("dim", dim, owner)
        check_positive_int("dim_latent", dim_latent, owner)
        if activation is not None and not isinstance(activation, nn.Module):
            raise TypeError(
                f"{owner}: 'activation' must be an nn.Module (e.g. nn.Tanh()), got "
                f"{type(activation).__name__}"
            )
        self.proj = nn.Linear(dim, dim_latent)
        self.activation = activation if activation is not None else nn.Identity()

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        return self.activation(self.proj(x)), None


class VariationalLatentBottleneck(nn.Module):
    """(b, d) -> latent (b, l) and the KL of the posterior per row (b,) (see module docstring).

    Args:
        dim: input width d.
        dim_latent: latent width l.
        kl_div_floor: free bits: each row's KL counts as at least this many nats (>= 0).
    """

    def __init__(self, dim: int, dim_latent: int, kl_div_floor: float = 0.0) -> None:
        super().__init__()
        owner = "VariationalLatentBottleneck"
        check_positive_int("dim", dim, owner)
        check_positive_int("dim_latent", dim_latent, owner)
        check_nonnegative("kl_div_floor", kl_div_floor, owner)
        self.kl_div_floor = float(kl_div_floor)
        self.to_mean_log_var = nn.Linear(dim, 2 * dim_latent)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z | x), each (b, l)."""
        mean, log_var = rearrange(self.to_mean_log_var(x), "b (two l) -> two b l", two=2)
        return mean, log_var

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_var = self.posterior(x)
        latent = mean
        if self.training:
            latent = mean + (0.5 * log_var).exp() * torch.randn_like(mean)
        kl = gaussian_kl(mean, log_var)
        if self.kl_div_floor > 0:
            kl = kl.clamp(min=self.kl_div_floor)
        return latent, kl
