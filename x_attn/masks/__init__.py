"""Attention masks as descriptions over absolute positions (see :mod:`x_attn.masks.spec`)."""

from x_attn.masks.causal import CAUSAL, Causal
from x_attn.masks.spec import AttnMask, MaskRule, Span

__all__ = ["CAUSAL", "AttnMask", "Causal", "MaskRule", "Span"]
