"""QK-norm family against the formulas, written out from the weights in float64.

Query-Key Normalization (arXiv 2010.04245: L2 norm by groups, fixed temperature, learned dim
scales as in arXiv 2302.05442), RMSNorm of query/key heads (2302.05442), of key heads only and
of value heads; kernel choice (these act on q/k/v, so SDPA stays) and refusals.

Shape legend: b batch, h heads, n / i queries, j keys, m memory slots, g groups, d head dim.
"""

from __future__ import annotations

import pytest
import torch
from reference import reference_attention
from test_attention_features import DIM_HEAD, close, hand_qkv, inputs, make, project_out

from x_attn import Decoder


def by_hand_l2(t: torch.Tensor, groups: int) -> torch.Tensor:
    """Each group of d / groups dims divided by its Euclidean length, written out."""
    parts = t.unflatten(-1, (groups, t.shape[-1] // groups))
    length = parts.pow(2).sum(-1, keepdim=True).sqrt()
    return (parts / length).flatten(-2)


def by_hand_rms(t: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    return t / t.pow(2).mean(-1, keepdim=True).sqrt() * (1 + gamma)


def jitter_(module: torch.nn.Module, names: tuple[str, ...]) -> None:
    """Move parameters whose name contains one of ``names`` off their initial value."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if any(key in name for key in names):
                p.add_(0.3 * torch.randn_like(p))


@pytest.mark.parametrize("flash", [None, False])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("groups", "dim_scale"), [(1, False), (2, False), (2, True)])
def test_qk_norm_is_grouped_cosine_attention(groups, dim_scale, causal, flash):
    attn = make(
        qk_norm=True,
        qk_norm_groups=groups,
        qk_norm_dim_scale=dim_scale,
        causal=causal,
        flash=flash,
    ).eval()
    jitter_(attn, ("q_scale", "k_scale"))
    x = inputs(spread=3.0)
    q, k, v = hand_qkv(attn, x)
    q, k = by_hand_l2(q, groups), by_hand_l2(k, groups)
    scale = 10.0
    if dim_scale:
        q, k, scale = q * attn.qk_norm.q_scale, k * attn.qk_norm.k_scale, DIM_HEAD**-0.5
    expected = project_out(attn, reference_attention(q, k, v, causal=causal, scale=scale))
    close(attn(x), expected)
    assert attn.explain().startswith("manual" if flash is False else "sdpa")


def test_qk_norm_dim_scales_start_at_dim_head_to_the_quarter():
    attn = make(qk_norm=True, qk_norm_dim_scale=True)
    for scale in (attn.qk_norm.q_scale, attn.qk_norm.k_scale):
        torch.testing.assert_close(scale, torch.full_like(scale, DIM_HEAD**0.25))
    assert attn.scale == DIM_HEAD**-0.5
    assert make(qk_norm=True, qk_norm_scale=4).scale == 4


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_qk_norm_logits_are_bounded_by_groups_times_scale(groups):
    attn = make(qk_norm=True, qk_norm_groups=groups, qk_norm_scale=3.0).eval()
    _, inter = attn(inputs(spread=100.0), return_attn=True)
    assert inter.logits.abs().max() <= groups * 3.0 + 1e-9
    assert inter.logits.abs().max() > 0.5 * 3.0  # not trivially small


def test_qk_norm_normalizes_memory_keys_too():
    attn = make(qk_norm=True, qk_norm_dim_scale=True, num_mem_kv=2).eval()
    jitter_(attn, ("q_scale", "k_scale"))
    x = inputs()
    q, k, v = hand_qkv(attn, x)
    mem_k = attn.memory_kv.mem_k.expand(2, -1, -1, -1)
    mem_v = attn.memory_kv.mem_v.expand(2, -1, -1, -1)
    q = by_hand_l2(q, 1) * attn.qk_norm.q_scale
    k = by_hand_l2(torch.cat((mem_k, k), -2), 1) * attn.qk_norm.k_scale
    out = reference_attention(q, k, torch.cat((mem_v, v), -2), scale=DIM_HEAD**-0.5)
    close(attn(x), project_out(attn, out))


@pytest.mark.parametrize("flash", [None, False])
@pytest.mark.parametrize("flags", [dict(qk_rmsnorm=True), dict(k_rmsnorm=True)])
def test_qk_rmsnorm_normalizes_heads_with_unit_offset_gain(flags, flash):
    attn = make(causal=True, flash=flash, **flags).eval()
    jitter_(attn, ("gamma",))
    x = inputs(spread=2.0)
    q, k, v = hand_qkv(attn, x)
    norms = attn.qk_rmsnorm
    if "qk_rmsnorm" in flags:
        q = by_hand_rms(q, norms.q_norm.gamma)
    else:
        assert norms.q_norm is None
    k = by_hand_rms(k, norms.k_norm.gamma)
    expected = project_out(attn, reference_attention(q, k, v, causal=True))
    close(attn(x), expected)
    assert attn.scale == DIM_HEAD**-0.5


@pytest.mark.parametrize("flash", [None, False])
def test_value_rmsnorm_normalizes_value_heads(flash):
    attn = make(value_rmsnorm=True, causal=True, flash=flash).eval()
    jitter_(attn, ("gamma",))
    x = inputs(spread=2.0)
    q, k, v = hand_qkv(attn, x)
    v = by_hand_rms(v, attn.value_rmsnorm.norm.gamma)
    close(attn(x), project_out(attn, reference_attention(q, k, v, causal=True)))


def test_value_rmsnorm_values_are_cached_normalized():
    """Decoding with a cache equals the full forward, so the cache holds normalized values."""
    attn = make(value_rmsnorm=True, qk_rmsnorm=True, causal=True).eval()
    jitter_(attn, ("gamma",))
    x = inputs(n=6)
    entry = attn.new_cache_entry()
    steps = [attn(x[:, :3], cache=entry)] + [
        attn(x[:, t : t + 1], cache=entry) for t in range(3, 6)
    ]
    close(torch.cat(steps, dim=1), attn(x))


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (
            dict(attn_qk_norm_groups=2),
            "attn_qk_norm_groups=2' has no effect without 'attn_qk_norm'",
        ),
        (dict(attn_qk_norm_scale=5.0), "has no effect without 'attn_qk_norm'"),
        (dict(attn_qk_norm_dim_scale=True), "has no effect without 'attn_qk_norm'"),
        (dict(attn_qk_norm=True, attn_qk_norm_groups=3), "must divide 'attn_dim_head=8'"),
        (dict(attn_qk_norm=True, attn_qk_norm_scale=0.0), "attn_qk_norm_scale' must be > 0"),
        (
            dict(attn_qk_norm=True, attn_qk_norm_dim_scale=True, attn_qk_norm_scale=5.0),
            "drop one",
        ),
        (dict(attn_qk_rmsnorm=True, attn_k_rmsnorm=True), "already normalizes the keys"),
        # MLA forms no per-head key or value to transform (its absorbed form attends in latents)
        (
            dict(attn_use_latent_kv=True, attn_dim_latent_kv=8, attn_qk_norm=True),
            "attn_qk_norm transform .* attn_use_latent_kv never forms",
        ),
        (
            dict(attn_use_latent_kv=True, attn_dim_latent_kv=8, attn_value_rmsnorm=True),
            "attn_value_rmsnorm transform .* attn_use_latent_kv never forms",
        ),
        (
            dict(depth=2, attn_use_latent_kv=True, attn_dim_latent_kv=8, add_value_residual=True),
            "attn_use_latent_kv never forms",
        ),
    ],
)
def test_qk_norm_family_refusals(flags, match):
    with pytest.raises(ValueError, match=match):
        Decoder(**{"dim": 16, "depth": 1, "heads": 2, "attn_dim_head": 8, **flags})


def test_qk_norm_groups_must_be_int():
    with pytest.raises(TypeError, match="attn_qk_norm_groups"):
        Decoder(
            dim=16, depth=1, heads=2, attn_dim_head=8, attn_qk_norm=True, attn_qk_norm_groups=2.0
        )
