"""The projection protocol: queries and a key payload, positions applied to the dims owned.

A projection turns the query input (b, i, d) into queries (b, h, i, dq) and the key/value input
(b, j, dc) into a *payload*: what a cache entry stores per key. For multi-head attention the
payload is (k, v); a latent projection (MLA) would store a latent and a rotary key instead.
:meth:`Projection.expand` turns a payload (cached or new) into keys (b, hk, j, dq) and values
(b, hk, j, dv) for the kernel. Positional transforms (rotary angles, position-infused
sinusoids) arrive as :class:`RowPositions` of exactly the rows projected, and the projection
applies them to the dims it owns (rotary: the first r dims of its query/key head dim).

Per-head query/key transforms of the layer's features ("qk" stage: QK-norm) act between the
head split and the positions: a projection calls :meth:`Projection.finish_queries` and
:meth:`Projection.finish_keys` on its heads instead of rotating them itself. Value transforms
(value residual, value RMSNorm) reach the values of a payload through
:meth:`Projection.map_values`.

Before the kernel, :meth:`Projection.operands` turns (queries, payload) into the kernel's q, k, v
and a ``finish`` map applied to the kernel's output; by default k, v = ``expand(payload)`` and
``finish`` is the identity. A projection that attends in another space (MLA's absorbed decode:
queries folded into the latent, values up-projected after attention) overrides it. The logit
scale is the projection's (``scale``; None = the layer's ``dim_head ** -0.5``), and a projection
whose rotary dims are a separate part of each head says how wide it is (``rotary_dim``).

Adding a head layout: one file with a :class:`Projection` subclass and its feature declaration
(slot "projection"), one line in the feature catalog.

Shape legend: b batch, i queries, j keys, d / dc query / context input dim, h query heads,
hk / hv key / value heads (divisors of h; query head t uses key head t // (h / hk)), dq
query/key head dim, dv value head dim.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from torch import Tensor, nn

from x_attn.positional.context import RowPositions

if TYPE_CHECKING:
    from x_attn.attention.features.stages import HeadTransform


def _unchanged(out: Tensor) -> Tensor:
    return out


class Operands(NamedTuple):
    """What the kernel attends with, and the map from its output to per-head values.

    Attributes:
        q: (b, h, i, dq') queries.
        k: (b, hk', j, dq') keys.
        v: (b, hv', j, dv') values.
        finish: (b, h, i, dv') kernel output -> (b, h, i, v_dim).
    """

    q: Tensor
    k: Tensor
    v: Tensor
    finish: Callable[[Tensor], Tensor] = _unchanged


class Projection(nn.Module):
    """Base class of the project stage.

    Attributes:
        heads: query heads h.
        k_heads: key heads (divides h).
        v_heads: value heads (divides h).
        qk_dim: per-head query/key dim (where rotary acts).
        qk_dim_options: the attention options (without prefix) that set ``qk_dim``, for
            error messages.
        v_dim: per-head value dim.
        head_transforms: the layer's "qk" stage features, applied in order to queries and
            keys before positions (registered on the Attention module, not here).
        transformable: whether the "qk" and "values" transforms can act on its query/key
            heads and its payload's values (False: a layer with them is refused).
        scale: logit scale, or None for the layer's ``dim_head ** -0.5``.
        rotary_dim: the exact rotary dim the projection was built for (a separate part of each
            head, e.g. MLA's decoupled rotary dims), or None: rotary acts on the first r dims
            of ``qk_dim``, r chosen by the stack.
    """

    heads: int
    k_heads: int
    v_heads: int
    qk_dim: int
    qk_dim_options: tuple[str, ...] = ("dim_head",)
    v_dim: int
    head_transforms: tuple[HeadTransform, ...] = ()
    transformable: bool = True
    scale: float | None = None
    rotary_dim: int | None = None

    def use_head_transforms(self, transforms: Sequence[HeadTransform]) -> None:
        """Apply ``transforms`` to every query and key head (a plain tuple: not submodules)."""
        object.__setattr__(self, "head_transforms", tuple(transforms))

    def finish_queries(self, q: Tensor, pos: RowPositions) -> Tensor:
        """(b, h, i, dq) query heads -> the head transforms, then the positions of these rows."""
        for transform in self.head_transforms:
            q = transform.q(q)
        return pos.rotate(q)

    def finish_keys(self, k: Tensor, pos: RowPositions) -> Tensor:
        """(b, hk, j, dq) key heads -> the head transforms, then the positions of these rows."""
        for transform in self.head_transforms:
            k = transform.k(k)
        return pos.rotate(k)

    def free_keys(self, k: Tensor) -> Tensor:
        """(b, hk, m, dq) keys without a position (memory key/values) -> transformed."""
        for transform in self.head_transforms:
            k = transform.free_k(k)
        return k

    def map_values(self, payload: Any, fn: Callable[[Tensor], Tensor]) -> Any:
        """The payload with ``fn`` applied to its values; (k, v) payloads here. A projection
        whose payload holds no values (a latent) overrides this or sets ``transformable``
        False."""
        k, v = payload
        return k, fn(v)

    def queries(self, x: Tensor, pos: RowPositions) -> Tensor:
        """(b, i, d) -> (b, h, i, dq) with the positions of these rows applied."""
        raise NotImplementedError

    def keys(self, x: Tensor, pos: RowPositions) -> Any:
        """(b, j, dc) -> the payload of these keys (what a cache entry holds)."""
        raise NotImplementedError

    def expand(self, payload: Any) -> tuple[Tensor, Tensor]:
        """Payload -> keys (b, hk, j, dq), values (b, hv, j, dv); (k, v) payloads pass through."""
        return payload

    def operands(self, q: Tensor, payload: Any) -> Operands:
        """Queries and every held key's payload -> the kernel's q, k, v and output map."""
        k, v = self.expand(payload)
        return Operands(q, k, v)

    def project(
        self, x: Tensor, kv_input: Tensor, q_pos: RowPositions, k_pos: RowPositions
    ) -> tuple[Tensor, Any]:
        """Queries of ``x`` and the payload of ``kv_input`` in one call."""
        return self.queries(x, q_pos), self.keys(kv_input, k_pos)
