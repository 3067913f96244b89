"""Multi-head latent attention (MLA): "DeepSeek-V2: A Strong, Economical, and Efficient
Mixture-of-Experts Language Model" (DeepSeek-AI, arXiv 2405.04434), section 2.1.

Keys and values of every head come from one low-rank latent per token, c = W_dkv x (d_c dims):
k_C = W_uk c and v = W_uv c per head. Queries may be compressed as well: c_q = W_dq x,
q_C = W_uq c_q (else q_C = W_uq x). Positions enter through decoupled rotary dims: a rotary
query per head, q_R = RoPE(W_qr c_q) (d_R dims), and rotary keys per token, k_R = RoPE(W_kr x),
shared by the query heads (the paper: one for all heads; with s rotary key heads, query head t
reads rotary key t // (h / s), like grouped-query attention). Head t attends with
[q_C ; q_R] . [k_C ; k_R] / sqrt(d_h + d_R).

Without rotary positions (``rotary_pos_emb=False``), ``latent_rope_subheads`` keeps the same
decoupled dims with RoPE the identity: q_R = W_qr c_q, k_R = W_kr x (no position, NoPE), of
x_attn's default rotary width max(dh / 2, 32) (the paper's d_R = d_h / 2 at d_h = 64), so
switching rotary on or off changes only the rotation.

The cache holds only [c ; k_R] per token: d_c + s * d_R numbers per layer (the payload, one
tensor (b, 1, j, d_c + s d_R), kept by :class:`x_attn.cache.latent.LatentEntry`).

Two equal ways to attend (:meth:`LatentProjection.operands`):

* materialised: k = [W_uk c ; k_R] and v = W_uv c for every head (prefill, training);
* absorbed: W_uk folds into the query, q~ = W_uk^T q_C (d_c dims), which scores against the
  cached latents directly; the weights average latents, and W_uv maps the result after
  attention. This is multi-query attention with one key head [c ; k_R] and value c, and forms
  no per-head key (decoding). With s > 1 rotary keys, q_R sits in the slot of its rotary key
  head and zeros elsewhere, so one key head still serves every query head.

``absorb``: True / False forces one mode; None picks per call the one with fewer multiply-adds
(absorbed for a short query block against many cached latents, materialised for prefill).

Shape legend: b batch, i queries, j keys, h heads, s rotary key heads, d / dc input / context
dim, dh head dim, c latent dim d_c, r rotary dim d_R, w = d_c + s * d_R cached width.
"""

from __future__ import annotations

import torch
from einops import einsum, rearrange
from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureContext, FeatureSpec
from x_attn.attention.projections.base import Operands, Projection
from x_attn.cache.latent import LatentEntry
from x_attn.kernels.inputs import expand_kv_heads
from x_attn.positional.context import RowPositions
from x_attn.positional.stack_positions import default_rotary_dim


def latent_input(dim: int, latent: int | None) -> nn.Module:
    """The down-projection to a latent of width ``latent`` (identity when None)."""
    return nn.Identity() if latent is None else nn.Linear(dim, latent, bias=False)


class LatentProjection(Projection):
    """Queries (b, h, i, dh + r); payload: the latent and rotary keys (b, 1, j, w).

    Not ``transformable``: per-head key transforms (QK-norm) and value transforms (value
    residual) would break the absorbed form, which never forms per-head keys or values.
    """

    transformable = False

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        dim_latent_kv: int,
        dim_latent_q: int | None = None,
        rope_dim: int = 0,
        rope_heads: int = 1,
        dim_context: int | None = None,
        absorb: bool | None = None,
        rotate: bool = True,
    ) -> None:
        super().__init__()
        dim_context = dim_context or dim
        rope_heads = rope_heads if rope_dim else 0
        self.heads, self.k_heads, self.v_heads = heads, heads, heads
        self.dim_head, self.latent = dim_head, dim_latent_kv
        self.rope_dim, self.rope_heads = rope_dim, rope_heads
        self.qk_dim, self.v_dim = dim_head + rope_dim, dim_head
        self.scale = self.qk_dim**-0.5
        self.rotary_dim = (rope_dim or None) if rotate else None  # None: k_R, q_R unrotated
        self.rotate = rotate
        self.absorb = absorb
        self.to_latent_q = latent_input(dim, dim_latent_q)  # W_dq
        q_in = dim_latent_q or dim
        self.to_q = nn.Linear(q_in, heads * dim_head, bias=False)  # W_uq
        self.to_latent_kv = nn.Linear(dim_context, dim_latent_kv, bias=False)  # W_dkv
        self.to_k = nn.Linear(dim_latent_kv, heads * dim_head, bias=False)  # W_uk
        self.to_v = nn.Linear(dim_latent_kv, heads * dim_head, bias=False)  # W_uv
        if rope_dim:
            self.to_q_rope = nn.Linear(q_in, heads * rope_dim, bias=False)  # W_qr
            self.to_k_rope = nn.Linear(dim_context, rope_heads * rope_dim, bias=False)  # W_kr

    def queries(self, x: Tensor, pos: RowPositions) -> Tensor:
        """(b, i, d) -> [q_C ; RoPE(q_R)] (b, h, i, dh + r)."""
        c_q = self.to_latent_q(x)
        q = rearrange(self.to_q(c_q), "b i (h d) -> b h i d", h=self.heads)
        if not self.rope_dim:
            return q
        q_rope = rearrange(self.to_q_rope(c_q), "b i (h r) -> b h i r", h=self.heads)
        return torch.cat((q, self._positioned(q_rope, pos)), dim=-1)

    def keys(self, x: Tensor, pos: RowPositions) -> Tensor:
        """(b, j, dc) -> [c ; RoPE(k_R) of each rotary key head] (b, 1, j, c + s r)."""
        latent = self.to_latent_kv(x)
        if self.rope_dim:
            k_rope = rearrange(self.to_k_rope(x), "b j (s r) -> b s j r", s=self.rope_heads)
            k_rope = self._positioned(k_rope, pos)
            latent = torch.cat((latent, rearrange(k_rope, "b s j r -> b j (s r)")), -1)
        return rearrange(latent, "b j w -> b 1 j w")

    def _positioned(self, t: Tensor, pos: RowPositions) -> Tensor:
        """RoPE of the rows' positions on the decoupled dims (the identity without rotary)."""
        return pos.rotate(t) if self.rotate else t

    def expand(self, payload: Tensor) -> tuple[Tensor, Tensor]:
        """The materialised keys [W_uk c ; k_R] (b, h, j, dh + r) and values W_uv c."""
        latent = payload[:, 0, :, : self.latent]
        k = rearrange(self.to_k(latent), "b j (h d) -> b h j d", h=self.heads)
        v = rearrange(self.to_v(latent), "b j (h d) -> b h j d", h=self.heads)
        if self.rope_dim:
            k_rope = payload[:, 0, :, self.latent :]
            k_rope = rearrange(k_rope, "b j (s r) -> b s j r", s=self.rope_heads)
            k = torch.cat((k, expand_kv_heads(k_rope, self.heads)), dim=-1)
        return k, v

    def operands(self, q: Tensor, payload: Tensor) -> Operands:
        """Materialised or absorbed (see the module docstring); the same scores either way."""
        absorb = self.absorb
        if absorb is None:
            absorb = self.absorbed_is_cheaper(q.shape[-2], payload.shape[-2])
        if not absorb:
            return Operands(q, *self.expand(payload))
        w_uk = rearrange(self.to_k.weight, "(h d) c -> h d c", h=self.heads)
        folded = einsum(q[..., : self.dim_head], w_uk.to(q.dtype), "b h i d, h d c -> b h i c")
        if self.rope_dim:
            folded = torch.cat((folded, self._rope_in_its_slot(q[..., self.dim_head :])), -1)
        return Operands(folded, payload, payload[..., : self.latent], self._up_project_values)

    def _rope_in_its_slot(self, q_rope: Tensor) -> Tensor:
        """(b, h, i, r) -> (b, h, i, s r): each head's rotary query at its rotary key's slot."""
        slot = torch.arange(self.heads, device=q_rope.device) // (self.heads // self.rope_heads)
        one_hot = nn.functional.one_hot(slot, self.rope_heads).to(q_rope.dtype)
        placed = einsum(q_rope, one_hot, "b h i r, h s -> b h i s r")
        return rearrange(placed, "b h i s r -> b h i (s r)")

    def _up_project_values(self, out: Tensor) -> Tensor:
        """Absorbed output (b, h, i, c) -> W_uv per head (b, h, i, dh)."""
        w_uv = rearrange(self.to_v.weight, "(h d) c -> h d c", h=self.heads)
        return einsum(out, w_uv.to(out.dtype), "b h i c, h d c -> b h i d")

    def absorbed_is_cheaper(self, i: int, j: int) -> bool:
        """Multiply-adds per sample of i queries on j keys: absorbed < materialised."""
        h, dh, c, r = self.heads, self.dim_head, self.latent, self.rope_dim
        materialised = 2 * j * c * h * dh + i * j * h * (2 * dh + r)
        absorbed = 2 * i * h * dh * c + i * j * h * (2 * c + self.rope_heads * r)
        return absorbed < materialised


def _build(ctx: FeatureContext) -> LatentProjection:
    cfg, subheads = ctx.config, ctx.config.latent_rope_subheads
    rope_dim = ctx.rotary_dim or 0
    if subheads is not None and not rope_dim:  # decoupled dims without rotation (NoPE)
        rope_dim = default_rotary_dim(cfg.dim_head)
    if rope_dim and ctx.heads % (subheads or 1):
        raise ValueError(
            f"Attention: {ctx.flag('latent_rope_subheads')}={subheads} does not divide "
            f"heads={ctx.heads}: each rotary key serves a group of query heads"
        )
    return LatentProjection(
        ctx.dim,
        ctx.heads,
        cfg.dim_head,
        cfg.dim_latent_kv,
        dim_latent_q=cfg.dim_latent_q,
        rope_dim=rope_dim,
        rope_heads=subheads or 1,
        dim_context=ctx.dim_context,
        absorb=cfg.latent_absorb,
        rotate=ctx.rotary_dim is not None,
    )


LATENT_KV_SPEC = FeatureSpec(
    "use_latent_kv",
    "2405.04434",
    "project",
    enabled=lambda ctx: ctx.config.use_latent_kv,
    build=_build,
    slot="projection",
    cache_entry=lambda ctx: LatentEntry,
)
