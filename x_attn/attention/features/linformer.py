"""Linformer (Wang et al., arXiv 2006.04768): keys and values projected along the sequence.

``attn_linformer=True`` gives each self-attention layer learned projections E, F (k, n) over
the sequence axis, n = ``attn_linformer_max_seq_len`` and k = ``attn_linformer_k``:

    head = softmax(Q (E K)^T / sqrt(d)) (F V)

so every query attends to k slots, each a learned mixture of all n positions: O(n k) instead
of O(n^2). Sharing (paper section 4): ``attn_linformer_share="none"`` (E, F per key/value
head), ``"headwise"`` (one E and one F per layer), ``"kv"`` (E = F, one per layer). The
paper's layerwise sharing (one matrix for every layer) is not offered: a feature is built per
layer, so it would need a stack-level parameter.

Shorter sequences use the first n' columns of E and F, which is what padding the keys to n
with zeros computes. Key padding is applied BEFORE the projection (padded key and value rows
are zeroed): after it every slot mixes every position and nothing could be masked. The slots
then reach the kernel as keys without a position (always visible), so SDPA runs them. Not
causal (each slot mixes future positions: refused on causal layers) and not cacheable.

Shape legend: b batch, h / hk heads, n positions, s slots (k), d head dim.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from x_attn.attention.features.spec import FeatureContext, FeatureSpec
from x_attn.masks.spec import AttnMask, Span

UNCACHEABLE = (
    "attn_linformer projects the keys along the whole sequence, so every new token changes "
    "every projected key"
)


class SequenceProjection(nn.Module):
    """E (hk|1, s, n) for keys and F for values (F = E when shared key-value)."""

    def __init__(self, k_heads: int, v_heads: int, slots: int, max_len: int, share: str) -> None:
        super().__init__()
        self.max_len = max_len
        bound = slots**-0.5
        heads_k = k_heads if share == "none" else 1
        self.proj_k = nn.Parameter(torch.empty(heads_k, slots, max_len).uniform_(-bound, bound))
        self.proj_v = None
        if share != "kv":
            heads_v = v_heads if share == "none" else 1
            self.proj_v = nn.Parameter(torch.empty(heads_v, slots, max_len).uniform_(-bound, bound))

    def forward(
        self, k: Tensor, v: Tensor, mask: AttnMask, bias: Tensor | None
    ) -> tuple[Tensor, Tensor, AttnMask, Tensor | None]:
        """Extend-k/v stage: the positional keys/values -> s projected slots without position."""
        n = _check(mask, bias, self.max_len)
        f = mask.free
        kp, vp = k[..., f:, :], v[..., f:, :]
        if mask.key_padding is not None:  # zero padded rows BEFORE mixing them
            real = mask.key_padding[:, None, :, None].to(k.device)
            kp, vp = kp.masked_fill(~real, 0.0), vp.masked_fill(~real, 0.0)
        proj_v = self.proj_k if self.proj_v is None else self.proj_v
        ks = torch.einsum("hsn,bhnd->bhsd", _heads(self.proj_k, kp)[..., :n].to(k.dtype), kp)
        vs = torch.einsum("hsn,bhnd->bhsd", _heads(proj_v, vp)[..., :n].to(v.dtype), vp)
        slots = ks.shape[-2]
        positionless = replace(mask, k=Span(mask.k.stop, mask.k.stop), rules=(), key_padding=None)
        k = torch.cat((ks, k[..., :f, :]), dim=-2)
        v = torch.cat((vs, v[..., :f, :]), dim=-2)
        return k, v, positionless.with_free(slots), None


def _heads(proj: Tensor, t: Tensor) -> Tensor:
    """(1|hk, s, n) -> (heads of t, s, n)."""
    return proj.expand(t.shape[1], -1, -1) if proj.shape[0] == 1 else proj


def _check(mask: AttnMask, bias: Tensor | None, max_len: int) -> int:
    """The number of positional keys; refuses what a projected sequence cannot apply."""
    if mask.user is not None:
        raise ValueError(
            "attn_mask: attn_linformer mixes every key into each projected slot, so it applies "
            "only key padding (pass mask=), not an arbitrary attention mask"
        )
    if mask.active_rules():
        kinds = ", ".join(sorted({rule.kind for rule in mask.active_rules()}))
        raise ValueError(
            f"attn_linformer cannot apply the {kinds} mask: each projected key mixes every "
            "position, the future ones included (call without causal=True)"
        )
    assert bias is None and not mask.pinned, "refused at construction"
    n = len(mask.k)
    if n > max_len:
        raise ValueError(
            f"attn_linformer: {n} keys, but attn_linformer_max_seq_len={max_len} fixes the "
            "projected length; shorten the input or build with a larger max length"
        )
    return n


def _build(ctx: FeatureContext) -> SequenceProjection:
    cfg, stack = ctx.config, ctx.stack
    clashes = [("causal", ctx.causal, "each projected key mixes future positions")]
    for name in ("rel_pos_bias", "alibi_pos_bias", "dynamic_pos_bias", "shaw_rel_pos"):
        on = bool(stack is not None and getattr(stack, name))
        clashes.append((name, on, "its bias is over positions, which the slots do not have"))
    for name in ("window_size", "mta", "lsh", "sparse_pattern", "bigbird"):
        on = getattr(cfg, name) not in (None, False)
        clashes.append((ctx.flag(name), on, "it reads the key positions the projection mixes"))
    absorbed = "the absorbed form attends over one shared latent key per token, not per-head keys"
    clashes.append((ctx.flag("latent_absorb"), bool(cfg.latent_absorb), absorbed))
    for name, on, why in clashes:
        if on:
            raise ValueError(
                f"Attention: {ctx.flag('linformer')} with {name}: {why}; Linformer is an "
                "encoder mechanism (drop one of them)"
            )
    proj = ctx.projection
    return SequenceProjection(
        proj.k_heads, proj.v_heads, cfg.linformer_k, cfg.linformer_max_seq_len, cfg.linformer_share
    )


LINFORMER_SPEC = FeatureSpec(
    "linformer",
    "2006.04768",
    "extend",
    enabled=lambda ctx: ctx.config.linformer and ctx.prefix == "attn_",
    build=_build,
    uncacheable=UNCACHEABLE,
)
