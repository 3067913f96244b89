"""Each attention feature flag against its paper's formula, computed by hand from the weights.

Memory key/values (arXiv 1907.01470), explicit sparse top-k (1912.11637), entmax-1.5
(1909.00015), talking heads (2003.02436), collaborative heads (2006.16362), attention on
attention (1908.06954), residual attention / RealFormer (2012.11747); kernel choice and refusals;
``attn_*`` vs ``cross_attn_*`` routing.

Shape legend: b batch, n / i queries, j keys, m memory slots, h / g heads, d model dim,
dh head dim.
"""

from __future__ import annotations

import pytest
import torch
from einops import einsum, rearrange
from entmax import entmax15
from reference import reference_attention, reference_probs

from x_attn import Attention, AttentionLayers, Decoder
from x_attn.attention.features.attn_on_attn import AttentionOnAttention
from x_attn.attention.projections import CollaborativeProjection

DIM, HEADS, DIM_HEAD = 16, 2, 8


def make(seed: int = 0, dim: int = DIM, heads: int = HEADS, **kwargs) -> Attention:
    torch.manual_seed(seed)
    return Attention(dim, heads, dim_head=kwargs.pop("dim_head", DIM_HEAD), **kwargs).double()


def inputs(b: int = 2, n: int = 5, dim: int = DIM, seed: int = 1, spread: float = 1.0):
    torch.manual_seed(seed)
    return torch.randn(b, n, dim, dtype=torch.float64) * spread


def hand_qkv(attn: Attention, x: torch.Tensor):
    """MHA projections (b h n dh) written out from the module's weight matrices."""
    split = "b n (h d) -> b h n d"
    q = rearrange(x @ attn.proj.to_q.weight.T, split, h=attn.heads)
    k = rearrange(x @ attn.proj.to_k.weight.T, split, h=attn.heads)
    v = rearrange(x @ attn.proj.to_v.weight.T, split, h=attn.heads)
    return q, k, v


def hand_logits(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    q, k, _ = hand_qkv(attn, x)
    return einsum(q, k, "b h i d, b h j d -> b h i j") * DIM_HEAD**-0.5


def project_out(attn: Attention, heads_out: torch.Tensor) -> torch.Tensor:
    return rearrange(heads_out, "b h n d -> b n (h d)") @ attn.to_out.weight.T


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- memory key / values


@pytest.mark.parametrize("flash", [None, False])
@pytest.mark.parametrize("causal", [False, True])
def test_mem_kv_equals_attention_over_prepended_memory(causal, flash):
    m, n = 3, 5
    attn = make(num_mem_kv=m, causal=causal, flash=flash).eval()
    x = inputs(n=n)
    pad = torch.ones(2, n, dtype=torch.bool)
    pad[0, -2:] = False
    q, k, v = hand_qkv(attn, x)
    mem_k = attn.memory_kv.mem_k.expand(2, -1, -1, -1)
    mem_v = attn.memory_kv.mem_v.expand(2, -1, -1, -1)
    # memory columns always visible; own keys: padding, and s <= t under causal
    own = pad[:, None, None, :] & (torch.ones(n, n).tril().bool() if causal else True)
    allowed = torch.cat((torch.ones(2, 1, n, m, dtype=torch.bool), own.expand(-1, 1, n, n)), -1)
    expected = reference_attention(
        q,
        torch.cat((mem_k, k), -2),
        torch.cat((mem_v, v), -2),
        mask=allowed,
        scale=DIM_HEAD**-0.5,
    )
    out = attn(x, mask=pad)
    close(out, project_out(attn, expected))


@pytest.mark.parametrize("causal", [False, True])
def test_mem_kv_columns_receive_attention_from_every_query(causal):
    m = 2
    attn = make(num_mem_kv=m, causal=causal)
    _, inter = attn(inputs(n=4), return_attn=True)
    probs = inter.probs
    assert probs.shape == (2, HEADS, 4, m + 4)
    close(probs.sum(-1), torch.ones(2, HEADS, 4, dtype=torch.float64))
    assert (probs[..., :m].sum(-1) > 1e-6).all()  # memory first, visible to every query
    if causal:  # first query: only the memory and itself
        assert (probs[:, :, 0, m + 1 :] == 0).all()


@pytest.mark.parametrize("which", ["mem_k", "mem_v"])
def test_changing_memory_changes_output(which):
    attn = make(num_mem_kv=2)
    x = inputs()
    before = attn(x)
    with torch.no_grad():
        getattr(attn.memory_kv, which).add_(1.0)
    after = attn(x)
    assert (before - after).abs().max() > 1e-3


# ---------------------------------------------------------------- sparse top-k


@pytest.mark.parametrize("causal", [False, True])
def test_sparse_topk_keeps_softmax_of_k_largest_logits(causal):
    topk, n = 3, 7
    attn = make(sparse_topk=topk, causal=causal)
    x = inputs(n=n)
    out, inter = attn(x, return_attn=True)
    logits = hand_logits(attn, x)
    if causal:
        logits = logits.masked_fill(~torch.ones(n, n).tril().bool(), float("-inf"))
    probs = inter.probs
    for t in range(n):
        allowed = t + 1 if causal else n
        row_logits, row_probs = logits[:, :, t], probs[:, :, t]
        kk = min(topk, allowed)
        assert ((row_probs > 0).sum(-1) == kk).all()
        top_vals, top_idx = row_logits.topk(kk, dim=-1)
        close(row_probs.gather(-1, top_idx), top_vals.softmax(-1))
    _, _, v = hand_qkv(attn, x)
    close(out, project_out(attn, einsum(probs, v, "b h i j, b h j d -> b h i d")))


@pytest.mark.parametrize("topk", [7, 10])
def test_sparse_topk_at_least_keys_is_plain_attention(topk):
    attn = make(sparse_topk=topk, causal=True)
    x = inputs(n=7)
    q, k, v = hand_qkv(attn, x)
    out = attn(x)
    close(out, project_out(attn, reference_attention(q, k, v, causal=True)))


# ---------------------------------------------------------------- entmax-1.5


def test_entmax15_matches_entmax_package_and_zeros_masked_keys():
    attn = make(use_entmax15=True)
    x = inputs(n=6, spread=3.0)  # spread logits -> peaked rows with exact zeros
    pad = torch.ones(2, 6, dtype=torch.bool)
    pad[1, 4:] = False
    out, inter = attn(x, mask=pad, return_attn=True)
    probs, logits = inter.probs, hand_logits(attn, x)
    close(probs.sum(-1), torch.ones_like(probs[..., 0]))
    assert (probs[1, ..., 4:] == 0).all()
    assert (probs[..., :4] == 0).any(), "a peaked input must give exact zeros on allowed keys"
    expected = torch.zeros_like(probs)
    for bi in range(2):
        keep = pad[bi]
        expected[bi, ..., keep] = entmax15(logits[bi, ..., keep], dim=-1)
    close(probs, expected)
    _, _, v = hand_qkv(attn, x)
    close(out, project_out(attn, einsum(expected, v, "b h i j, b h j d -> b h i d")))


# ---------------------------------------------------------------- talking heads


def talking(attn: Attention, stage: str):
    return next(f for f in attn.scores.features if getattr(f, "stage", None) == stage)


@pytest.mark.parametrize("flag", ["talking_heads", "pre_talking_heads", "post_talking_heads"])
def test_talking_heads_identity_mixing_is_plain_attention(flag):
    attn = make(heads=3, causal=True, **{flag: True})
    x = inputs(n=5)
    q, k, v = hand_qkv(attn, x)
    out = attn(x)
    close(out, project_out(attn, reference_attention(q, k, v, causal=True)))


@pytest.mark.parametrize("flag", ["talking_heads", "pre_talking_heads", "post_talking_heads"])
def test_talking_heads_random_mixing_matches_paper_formula(flag):
    h, n = 3, 5
    attn = make(heads=h, causal=True, **{flag: True})
    torch.manual_seed(5)
    w_pre, w_post = torch.randn(h, h, dtype=torch.float64), torch.randn(h, h, dtype=torch.float64)
    with torch.no_grad():
        if flag != "post_talking_heads":
            talking(attn, "pre").weight.copy_(w_pre)
        if flag != "pre_talking_heads":
            talking(attn, "post").weight.copy_(w_post)
    x = inputs(n=n)
    logits, (_, _, v) = hand_logits(attn, x), hand_qkv(attn, x)
    if flag != "post_talking_heads":  # mix logits across heads, then mask, then softmax
        logits = einsum(w_pre, logits, "h g, b g i j -> b h i j")
    future = ~torch.ones(n, n).tril().bool()
    probs = logits.masked_fill(future, float("-inf")).softmax(-1)
    if flag != "pre_talking_heads":  # mix the probabilities after the softmax
        probs = einsum(w_post, probs, "h g, b g i j -> b h i j")
    out = attn(x)
    close(out, project_out(attn, einsum(probs, v, "b h i j, b h j d -> b h i d")))


# ---------------------------------------------------------------- collaborative heads


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_collab_heads_parameter_count_falls_with_compression():
    kw = dict(dim=32, heads=4, dim_head=8)
    counts = [
        n_params(make(collab_heads=True, collab_compression=c, **kw)) for c in (1.0, 0.75, 0.5, 0.3)
    ]
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == 4
    assert counts[-1] < n_params(make(**kw))
    dk = round(0.3 * 4 * 8)  # shared W_q, W_k (d x dk), W_v, W_o, mixing (h x dk)
    assert counts[-1] == 2 * 32 * dk + 32 * 32 + 32 * 32 + 4 * dk


@pytest.mark.parametrize("flash", [None, False])
def test_collab_heads_with_one_hot_mixing_reproduce_mha(flash):
    h, dh = 4, 4
    mha = make(seed=3, heads=h, dim_head=dh, causal=True).eval()
    collab = make(
        seed=4,
        heads=h,
        dim_head=dh,
        causal=True,
        collab_heads=True,
        collab_compression=1.0,
        flash=flash,
    ).eval()
    assert isinstance(collab.proj, CollaborativeProjection) and collab.qk_dim == h * dh
    one_hot = torch.zeros(h, h * dh, dtype=torch.float64)
    for head in range(h):
        one_hot[head, head * dh : (head + 1) * dh] = 1.0
    with torch.no_grad():
        collab.proj.mixing.copy_(one_hot)
        for name in ("to_q", "to_k", "to_v"):
            getattr(collab.proj, name).weight.copy_(getattr(mha.proj, name).weight)
        collab.to_out.weight.copy_(mha.to_out.weight)
    x = inputs(n=6)
    pad = torch.ones(2, 6, dtype=torch.bool)
    pad[0, :2] = False
    close(collab(x, mask=pad), mha(x, mask=pad))


# ---------------------------------------------------------------- attention on attention


def test_attn_on_attn_is_gated_information_vector():
    attn = make(on_attn=True)
    assert isinstance(attn.to_out, AttentionOnAttention)
    x = inputs()
    q, k, v = hand_qkv(attn, x)
    v_hat = rearrange(reference_attention(q, k, v), "b h n d -> b n (h d)")
    both = torch.cat((v_hat, x), dim=-1)
    info, gate = attn.to_out.to_info, attn.to_out.to_gate
    expected = torch.sigmoid(both @ gate.weight.T + gate.bias) * (both @ info.weight.T + info.bias)
    close(attn(x), expected)


# ---------------------------------------------------------------- residual attention


def test_residual_attn_adds_previous_logits():
    attn = make(residual_attn=True, causal=True)
    x = inputs(n=5)
    torch.manual_seed(7)
    prev = torch.randn(2, HEADS, 5, 5, dtype=torch.float64)
    out, inter = attn(x, prev_logits=prev, return_intermediates=True)
    expected_logits = hand_logits(attn, x) + prev
    close(inter.logits, expected_logits)
    q, k, v = hand_qkv(attn, x)
    probs = reference_probs(q, k, v, bias=prev, causal=True)
    close(inter.probs, probs)
    close(out, project_out(attn, einsum(probs, v, "b h i j, b h j d -> b h i d")))


def test_residual_attn_chains_logits_through_a_stack():
    torch.manual_seed(0)
    stack = AttentionLayers(
        dim=DIM, depth=2, heads=HEADS, attn_dim_head=DIM_HEAD, residual_attn=True
    ).double()
    blocks = [layer["block"] for layer in stack.layers if isinstance(layer["block"], Attention)]
    seen = []
    hooks = [
        b.register_forward_hook(
            lambda m, a, kw, out: seen.append((a[0], kw, out[1])), with_kwargs=True
        )
        for b in blocks
    ]
    stack(inputs())
    for hook in hooks:
        hook.remove()
    (h1, kw1, inter1), (h2, kw2, inter2) = seen
    assert kw1["prev_logits"] is None
    first = hand_logits(blocks[0], h1)
    close(inter1.logits, first)
    close(kw2["prev_logits"], first)
    close(inter2.logits, hand_logits(blocks[1], h2) + first)


# ---------------------------------------------------------------- kernel choice and refusals

SCORE_FLAGS = [
    (dict(attn_sparse_topk=2), "attn_sparse_topk"),
    (dict(attn_use_entmax15=True), "attn_use_entmax15"),
    (dict(attn_talking_heads=True), "attn_talking_heads"),
    (dict(attn_pre_talking_heads=True), "attn_pre_talking_heads"),
    (dict(attn_post_talking_heads=True), "attn_post_talking_heads"),
    (dict(residual_attn=True), "residual_attn"),
]
SMALL = dict(dim=DIM, depth=1, heads=HEADS, attn_dim_head=DIM_HEAD)


@pytest.mark.parametrize("flags, name", SCORE_FLAGS)
def test_score_flags_refuse_flash(flags, name):
    with pytest.raises(ValueError, match=name):
        Decoder(**SMALL, attn_flash=True, **flags)


@pytest.mark.parametrize(
    "flags, name",
    [
        (dict(cross_residual_attn=True), "cross_residual_attn"),
        (dict(cross_attn_sparse_topk=2), "cross_attn_sparse_topk"),
        (dict(cross_attn_post_talking_heads=True), "cross_attn_post_talking_heads"),
    ],
)
def test_cross_score_flags_refuse_cross_flash(flags, name):
    with pytest.raises(ValueError, match=name):
        Decoder(**SMALL, cross_attend=True, cross_attn_flash=True, **flags)


@pytest.mark.parametrize("flags, name", SCORE_FLAGS)
def test_score_flags_default_to_manual_kernel(flags, name):
    torch.manual_seed(0)
    model = Decoder(**SMALL, **flags).double()
    assert all(name in line and "manual" in line for line in model.explain())
    _, inter = model(inputs(), return_hiddens=True)
    assert inter.kernels == ["manual"]


@pytest.mark.parametrize(
    "position",
    [
        dict(rotary_pos_emb=True),
        dict(rel_pos_bias=True),
        dict(alibi_pos_bias=True),
    ],
)
def test_sdpa_capable_flags_keep_sdpa_and_match_manual(position):
    torch.manual_seed(0)
    model = (
        Decoder(
            dim=DIM,
            depth=2,
            heads=4,
            attn_dim_head=8,
            attn_num_mem_kv=2,
            attn_collab_heads=True,
            attn_on_attn=True,
            **position,
        )
        .double()
        .eval()
    )
    assert all(": sdpa:" in line for line in model.explain())
    x = inputs(n=6)
    fused, inter = model(x, return_hiddens=True)
    assert inter.kernels == ["sdpa", "sdpa"]
    manual, inter_m = model(x, return_hiddens=True, return_attn=True)
    assert inter_m.kernels == ["manual", "manual"]
    close(fused, manual)


# ---------------------------------------------------------------- attn_* vs cross_attn_*


def split_blocks(model: AttentionLayers) -> tuple[list[Attention], list[Attention]]:
    pairs = list(zip(model.types, model.layers))
    return (
        [layer["block"] for t, layer in pairs if t == "a"],
        [layer["block"] for t, layer in pairs if t == "c"],
    )


def test_cross_attn_flags_apply_only_to_cross_attention():
    model = Decoder(
        **SMALL,
        cross_attend=True,
        cross_attn_num_mem_kv=3,
        cross_attn_sparse_topk=4,
        cross_attn_collab_heads=True,
        cross_attn_on_attn=True,
        cross_attn_talking_heads=True,
    )
    (self_attn,), (cross,) = split_blocks(model)
    assert self_attn.memory_kv is None and cross.memory_kv.num == 3
    assert not isinstance(self_attn.proj, CollaborativeProjection)
    assert isinstance(cross.proj, CollaborativeProjection)
    assert not isinstance(self_attn.to_out, AttentionOnAttention)
    assert isinstance(cross.to_out, AttentionOnAttention)
    assert self_attn.scores.flags == [] and self_attn.kernel.name == "sdpa"
    assert set(cross.scores.flags) == {"cross_attn_sparse_topk", "cross_attn_talking_heads"}


def test_attn_flags_apply_to_self_and_cross_attention():
    model = Decoder(
        **SMALL,
        cross_attend=True,
        attn_num_mem_kv=2,
        attn_on_attn=True,
        attn_use_entmax15=True,
        attn_sparse_topk=None,
        attn_collab_heads=True,
        cross_attn_num_mem_kv=5,
    )
    (self_attn,), (cross,) = split_blocks(model)
    for block in (self_attn, cross):
        assert isinstance(block.proj, CollaborativeProjection)
        assert isinstance(block.to_out, AttentionOnAttention)
        assert block.kernel.name == "manual" and block.config.use_entmax15
    assert self_attn.scores.flags == ["attn_use_entmax15"]
    assert cross.scores.flags == ["cross_attn_use_entmax15"]
    assert self_attn.memory_kv.num == 2 and cross.memory_kv.num == 5  # cross_ overrides attn_
