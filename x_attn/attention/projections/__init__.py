"""Projection objects: inputs -> queries and a key payload, with the heads and the dims that
positions act on (see :class:`x_attn.attention.projections.base.Projection`)."""

from x_attn.attention.projections.base import Operands, Projection
from x_attn.attention.projections.collaborative import CollaborativeProjection
from x_attn.attention.projections.latent import LatentProjection
from x_attn.attention.projections.multihead import MultiHeadProjection

__all__ = [
    "CollaborativeProjection",
    "LatentProjection",
    "MultiHeadProjection",
    "Operands",
    "Projection",
]
