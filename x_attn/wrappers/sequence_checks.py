"""Argument checks of :class:`x_attn.wrappers.sequence.SequenceWrapper`.

:func:`check_memory_args` checks the Transformer-XL memory length and the memory-token count
against the stack, :func:`check_abs_kind` the choice of absolute embedding, and
:func:`refuse_lead_gap` refuses memory / class tokens in front of left padding when layers mix
neighbouring positions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from x_attn.layers.stack import AttentionLayers

__all__ = ["check_abs_kind", "check_memory_args", "refuse_lead_gap"]


def check_memory_args(
    owner: str, attn_layers: AttentionLayers, max_mem_len: Any, num_memory_tokens: Any
) -> None:
    """Transformer-XL memory length and memory-token count: ints >= 0 the stack can use."""
    if isinstance(max_mem_len, bool) or not isinstance(max_mem_len, int) or max_mem_len < 0:
        raise ValueError(f"{owner}: 'max_mem_len' must be an int >= 0, got {max_mem_len!r}")
    if max_mem_len and attn_layers.reversible is not None:
        raise ValueError(
            f"{owner}: max_mem_len (Transformer-XL memories) needs per-layer hidden states, "
            "which a reversible=True stack does not keep; drop one of the two"
        )
    if max_mem_len and attn_layers.config.attn.mta:
        raise ValueError(
            f"{owner}: max_mem_len (Transformer-XL memories) gives keys without their query "
            "rows, which the query convolution of attn_mta reads; drop one of the two"
        )
    if max_mem_len and attn_layers.mems_unsupported_reason is not None:
        raise ValueError(
            f"{owner}: max_mem_len (Transformer-XL memories) cannot be used: "
            f"{attn_layers.mems_unsupported_reason}; drop one of the two"
        )
    if max_mem_len and attn_layers.num_self_attention_layers == 0:
        raise ValueError(
            f"{owner}: max_mem_len (Transformer-XL memories) needs self-attention layers to "
            f"carry them, but the layers {attn_layers.types} have none; drop max_mem_len"
        )
    if num_memory_tokens is None:
        return
    if isinstance(num_memory_tokens, bool) or not isinstance(num_memory_tokens, int):
        raise TypeError(
            f"{owner}: 'num_memory_tokens' must be an int, got "
            f"{type(num_memory_tokens).__name__} {num_memory_tokens!r}"
        )
    if num_memory_tokens < 0:
        raise ValueError(
            f"{owner}: 'num_memory_tokens' must be >= 0 (0 or None: no memory tokens), got "
            f"{num_memory_tokens}"
        )


def check_abs_kind(
    owner: str, dim: int, use: bool, scaled: bool, sinusoidal: bool, max_seq_len: int | None
) -> None:
    """One kind of absolute embedding, and only when absolute embeddings are on."""
    if not isinstance(sinusoidal, bool):
        raise TypeError(f"{owner}: 'sinusoidal_pos_emb' must be a bool, got {sinusoidal!r}")
    if sinusoidal and scaled:
        raise ValueError(
            f"{owner}: sinusoidal_pos_emb and scaled_sinu_pos_emb are two absolute embeddings; "
            "choose one"
        )
    if sinusoidal and not use:
        raise ValueError(
            f"{owner}: sinusoidal_pos_emb=True chooses the absolute embedding, but "
            "use_abs_pos_emb=False turns absolute embeddings off; drop one"
        )
    if sinusoidal and max_seq_len is None:
        raise ValueError(
            f"{owner}: sinusoidal_pos_emb=True chooses the absolute embedding, but "
            "max_seq_len=None turns absolute embeddings off; give max_seq_len or drop it"
        )
    if sinusoidal and dim % 2:
        raise ValueError(f"{owner}: sinusoidal_pos_emb needs an even dim, got dim={dim}")


def refuse_lead_gap(owner: str, attn_layers: AttentionLayers) -> None:
    """Lead tokens in front of left padding leave a gap that convolutions would read."""
    flags = {f for m in attn_layers.modules() for f in getattr(m, "neighbour_flags", ())}
    if flags:
        raise ValueError(
            f"{owner}: num_memory_tokens (or use_cls_token) with a left-padded "
            "mask puts padding between those tokens and the row, and "
            f"{sorted(flags)} mix neighbouring positions, so a padded row would not compute "
            "what it computes alone; pad on the right, or drop the memory / class tokens"
        )
