"""Checkpoints of other libraries loaded into x_attn models.

``from_x_transformers(source, model)``: an x-transformers model or state_dict into the x_attn
model built with the same flags (:mod:`x_attn.interop.x_transformers`).
"""

from x_attn.interop.x_transformers import from_x_transformers

__all__ = ["from_x_transformers"]
