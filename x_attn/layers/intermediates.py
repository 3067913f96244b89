"""What a stack forward leaves behind: hidden states, attention maps, kernels, the cache.

Shape legend: b batch, n sequence, d model dim, h heads, i queries, j keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from x_attn.cache import KVCache


@dataclass
class LayerIntermediates:
    """What a stack forward leaves behind.

    Attributes:
        hiddens: the input of every self-attention layer (b, n, d), for Transformer-XL mems.
        layer_hiddens: the input of every layer run, then the output before the final norm.
        attn_maps: attention probabilities (b, h, i, j) of every attention layer, when asked.
        kernels: the kernel each attention layer ran ("sdpa" / "manual").
        cache: the KV cache after this forward (a new one; the cache passed in is unchanged),
            or None. Pass the intermediates (or this cache) as ``cache=`` to continue.
        mask: (b, n) padding of the rows this forward ran (for the mems they become).
        attn_intermediates: what each attention run left (kernel, maps, inputs), in run order,
            with ``attn_runs``: the index in the stack's layers of each run's layer (for
            :meth:`x_attn.layers.stack.AttentionLayers.attn_qk_clip_`).
    """

    hiddens: list[Tensor] = field(default_factory=list)
    layer_hiddens: list[Tensor] = field(default_factory=list)
    attn_maps: list[Tensor] = field(default_factory=list)
    kernels: list[str] = field(default_factory=list)
    cache: KVCache | None = None
    mask: Tensor | None = None
    attn_intermediates: list[Any] = field(default_factory=list)
    attn_runs: list[int] = field(default_factory=list)

    @property
    def cache_length(self) -> int:
        """Positions the cache holds (x-transformers' name), 0 without a cache."""
        return 0 if self.cache is None else self.cache.length


def keep_hiddens(stack_kwargs: dict[str, Any], *asked: bool) -> None:
    """Set the stack call's ``keep_hiddens`` (unless the caller gave one) to whether any of
    ``asked`` -- the returns that read the per-layer lists (intermediates, mems, the
    next-embedding head) -- is on. A wrapper's plain forward then keeps no layer's
    activations past its run."""
    stack_kwargs.setdefault("keep_hiddens", any(asked))
