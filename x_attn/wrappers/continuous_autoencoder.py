"""ContinuousTransformerAutoencoder: a sequence of vectors -> one latent vector -> the sequence.

The encoder (a bidirectional :class:`ContinuousTransformerWrapper`) reads the sequence
(b, n, di); the masked mean of its outputs over the real positions goes through a latent
bottleneck (:mod:`x_attn.wrappers.latent_bottleneck`: deterministic, or the Gaussian posterior
of a variational autoencoder, arXiv 1312.6114) to a latent (b, l). A linear map turns the latent
into one token that opens the stream of a causal decoder, which then predicts the sequence
autoregressively with teacher forcing: the output at the latent token predicts x_0, the output
at x_i predicts x_{i+1}. The reconstruction loss is the L1 or squared error, averaged over the
features and the real positions (``lens``).

While training, ``latents_dropout_prob`` of the rows (each independently) decode from a zero
latent, so the decoder also learns the sequence without it (the latent token is then the bias of
its map, the same for every row).

Difference from x-transformers 2.31: there the decoder's output at x_i itself is compared with
x_i (a causal decoder that sees x_i can copy it), and a dropped latent is masked out; here each
position predicts the next one, so only the latent tells the decoder the first vector, and the
variational latent is the posterior mean in eval mode (x-transformers samples it in both).

Shape legend: b batch, n sequence, di input dim, d model dim, l latent dim.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from x_attn.layers.stack import Decoder, Encoder
from x_attn.serialization import records_config
from x_attn.utils import check_positive_int, check_probability, default
from x_attn.validation_inputs import check_float_input
from x_attn.wrappers.continuous import ContinuousTransformerWrapper
from x_attn.wrappers.latent_bottleneck import (
    DeterministicLatentBottleneck,
    VariationalLatentBottleneck,
)
from x_attn.wrappers.training_aids import lens_mask

__all__ = ["ContinuousTransformerAutoencoder"]

_OWNER = "ContinuousTransformerAutoencoder"


def _bottleneck(
    kind: str, module: nn.Module | None, dim: int, dim_latent: int, kwargs: dict[str, dict]
) -> nn.Module:
    """The bottleneck: a custom module, or the deterministic / variational one of ``kind``."""
    # each type keeps its own kwargs, so switching bottleneck_type needs no other change; a
    # custom module uses neither
    unused = [k for k, v in kwargs.items() if v and module is not None]
    if unused:
        raise ValueError(
            f"{_OWNER}: {unused[0]}_bottleneck_kwargs configure the built-in {unused[0]} "
            "bottleneck, but a custom bottleneck module is given; drop one of the two"
        )
    if module is not None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"{_OWNER}: 'bottleneck' must be an nn.Module, got {module!r}")
        return module
    if kind == "deterministic":
        return DeterministicLatentBottleneck(dim, dim_latent, **kwargs["deterministic"])
    if kind == "variational":
        return VariationalLatentBottleneck(dim, dim_latent, **kwargs["variational"])
    raise ValueError(
        f"{_OWNER}: 'bottleneck_type' must be 'deterministic' or 'variational', got {kind!r}"
    )


@records_config
class ContinuousTransformerAutoencoder(nn.Module):
    """Transformer autoencoder of continuous sequences (see the module docstring).

    Args:
        dim: model width d of encoder and decoder.
        enc_depth / dec_depth: layers of the encoder / decoder.
        max_seq_len: longest sequence (absolute positions of both stacks).
        dim_input: feature size di of the sequence (None: d, no input / output maps).
        dim_latent: latent size l (None: d).
        bottleneck: a custom module (b, d) -> latent (b, l), or -> (latent, per-row aux loss).
        bottleneck_type: "deterministic" or "variational" (when ``bottleneck`` is not given).
        deterministic_bottleneck_kwargs: e.g. ``{"activation": nn.Tanh()}``; read when
            bottleneck_type is "deterministic" (each type keeps its own, as in x-transformers).
        variational_bottleneck_kwargs: e.g. ``{"kl_div_floor": 0.1}`` (free bits); read when
            bottleneck_type is "variational".
        loss_type: "l1" or "l2" reconstruction error.
        attn_dim_head / heads: attention shape of both stacks.
        enc_kwargs / dec_kwargs: stack flags for the encoder / decoder only.
        latents_dropout_prob: fraction of rows decoded without their latent while training.
        **kwargs: stack flags for both (e.g. ``rotary_pos_emb=True``).
    """

    def __init__(
        self,
        *,
        dim: int,
        enc_depth: int,
        dec_depth: int,
        max_seq_len: int,
        dim_input: int | None = None,
        dim_latent: int | None = None,
        bottleneck: nn.Module | None = None,
        bottleneck_type: Literal["deterministic", "variational"] = "deterministic",
        deterministic_bottleneck_kwargs: dict[str, Any] | None = None,
        variational_bottleneck_kwargs: dict[str, Any] | None = None,
        loss_type: Literal["l1", "l2"] = "l2",
        attn_dim_head: int = 64,
        heads: int = 8,
        enc_kwargs: dict[str, Any] | None = None,
        dec_kwargs: dict[str, Any] | None = None,
        latents_dropout_prob: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        check_positive_int("dim", dim, _OWNER)
        if loss_type not in ("l1", "l2"):
            raise ValueError(f"{_OWNER}: 'loss_type' must be 'l1' or 'l2', got {loss_type!r}")
        check_probability("latents_dropout_prob", latents_dropout_prob, _OWNER)
        dim_latent = default(dim_latent, dim)
        check_positive_int("dim_latent", dim_latent, _OWNER)
        self.dim_input, self.loss_type = default(dim_input, dim), loss_type
        self.latents_dropout_prob = float(latents_dropout_prob)
        shared = dict(dim=dim, heads=heads, attn_dim_head=attn_dim_head, **kwargs)
        self.encoder = ContinuousTransformerWrapper(
            attn_layers=Encoder(depth=enc_depth, **{**shared, **(enc_kwargs or {})}),
            max_seq_len=max_seq_len,
            dim_in=dim_input,
            average_pool_embed=True,
        )
        self.decoder = ContinuousTransformerWrapper(
            attn_layers=Decoder(depth=dec_depth, **{**shared, **(dec_kwargs or {})}),
            max_seq_len=max_seq_len,
            dim_in=dim_input,
            dim_out=dim_input,
        )
        bottleneck_kwargs = {
            "deterministic": deterministic_bottleneck_kwargs or {},
            "variational": variational_bottleneck_kwargs or {},
        }
        self.bottleneck = _bottleneck(
            bottleneck_type, bottleneck, dim, dim_latent, bottleneck_kwargs
        )
        self.from_latent = nn.Linear(dim_latent, dim)

    def _mask(self, seq: Tensor, lens: Tensor | None) -> Tensor | None:
        check_float_input("seq", seq, self.dim_input, _OWNER)
        return None if lens is None else lens_mask(lens, seq.shape[1], _OWNER)

    def _latent(self, seq: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Latent (b, l) and the bottleneck's per-row auxiliary loss (b,) or None."""
        out = self.bottleneck(self.encoder(seq, mask=mask))
        latent, aux = out if isinstance(out, tuple) else (out, None)
        if aux is not None and aux.shape != latent.shape[:1]:
            raise ValueError(
                f"{_OWNER}: the bottleneck's auxiliary loss must have shape (batch,), got "
                f"{tuple(aux.shape)}"
            )
        return latent, aux

    def encode(
        self,
        seq: Tensor,
        lens: Tensor | None = None,
        return_aux_loss: bool = False,
        return_unreduced_loss: bool = False,
    ):
        """Latents (b, l) of ``seq`` (b, n, di) whose rows have lengths ``lens`` (b,).

        With ``return_aux_loss`` also the bottleneck's loss (the KL of a variational one; None
        for a deterministic one): its batch mean, or per row with ``return_unreduced_loss``.
        """
        latent, aux = self._latent(seq, self._mask(seq, lens))
        if not return_aux_loss:
            return latent
        return latent, _reduce(aux, None, return_unreduced_loss)

    def forward(
        self,
        seq: Tensor,
        lens: Tensor | None = None,
        return_all_losses: bool = False,
        return_unreduced_loss: bool = False,
    ):
        """Reconstruction loss plus the bottleneck's loss (see the module docstring).

        Returns the total loss (a scalar, or (b,) with ``return_unreduced_loss``), and with
        ``return_all_losses`` also ``(reconstruction, auxiliary)`` (auxiliary None when the
        bottleneck has none).
        """
        mask = self._mask(seq, lens)
        if mask is not None:  # padding may hold anything (NaN), which must not reach a gradient
            seq = seq.masked_fill(~mask.unsqueeze(-1), 0.0)
        latent, aux = self._latent(seq, mask)
        if self.training and self.latents_dropout_prob > 0:
            keep = torch.rand(latent.shape[0], device=latent.device) >= self.latents_dropout_prob
            latent = latent * keep.unsqueeze(-1).to(latent.dtype)
        token = rearrange(self.from_latent(latent), "b d -> b 1 d")
        decoder_mask = None if mask is None else mask[:, :-1]
        pred = self.decoder(seq[:, :-1], mask=decoder_mask, prepend_embeds=token)
        error = (pred - seq).abs() if self.loss_type == "l1" else (pred - seq).square()
        recon = _reduce(error.mean(dim=-1), mask, return_unreduced_loss)
        aux = _reduce(aux, None, return_unreduced_loss)
        loss = recon if aux is None else recon + aux
        return (loss, (recon, aux)) if return_all_losses else loss


def _reduce(values: Tensor | None, mask: Tensor | None, per_row: bool) -> Tensor | None:
    """Mean of (b,) or (b, n) ``values`` over the real positions of ``mask``: one number, or one
    per row with ``per_row``."""
    if values is None:
        return None
    if values.ndim == 1:
        return values if per_row else values.mean()
    weights = torch.ones_like(values) if mask is None else mask.to(values.dtype)
    total = values if mask is None else values.masked_fill(~mask, 0.0)  # padding may hold NaN
    if per_row:
        return total.sum(dim=-1) / weights.sum(dim=-1)
    return total.sum() / weights.sum()
