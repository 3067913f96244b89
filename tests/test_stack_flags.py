"""Stack-level flags wired inside built models (the blocks are unit-tested in test_layers_blocks).

Every numeric reference is recomputed here in float64 from the modules' weights with the
papers' formulas: LayerNorm / RMSNorm / ScaleNorm, attention = softmax(q k^T / sqrt(dh) + bias
+ previous logits) v (``reference_probs``), FF = W2 gelu(W1 x + b1) + b2, GRU gating (GTrXL),
the two-stream reversible recurrence, T5 buckets for short distances (exact range).

Shape legend: b batch, n / i / j sequence, h heads, d model dim, dh head dim, m memory tokens.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from reference import reference_probs
from torch import Tensor, nn

from x_attn import Attention, Decoder, Encoder, KVCache, TransformerWrapper
from x_attn.layers.norms import LayerNorm, RMSNorm, ScaleNorm
from x_attn.layers.residual import GRUGating, Residual, ReZeroResidual
from x_attn.positional.context import PositionContext

D, H, DH, N, B, V = 16, 2, 8, 6, 2, 11
TOKENS = torch.randint(0, V, (B, N), generator=torch.Generator().manual_seed(2))
SMALL = dict(dim=D, heads=H, attn_dim_head=DH, ff_mult=2)


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """float64 and every parameter drawn N(0, 0.3^2), so no norm gain or gate is trivial."""
    module.double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    return module


def rand(*shape: int, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def lm(layers: nn.Module, **kwargs) -> TransformerWrapper:
    """Randomized float64 TransformerWrapper (vocabulary V) around ``layers``."""
    return randomize(TransformerWrapper(num_tokens=V, max_seq_len=N, attn_layers=layers, **kwargs))


# ---------------------------------------------------------------- hand-written references


def hand_norm(norm: nn.Module, x: Tensor) -> Tensor:
    if isinstance(norm, nn.LayerNorm):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
    if isinstance(norm, RMSNorm):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.g
    if isinstance(norm, ScaleNorm):
        return norm.g * x / x.norm(dim=-1, keepdim=True).clamp(min=norm.eps)
    assert isinstance(norm, nn.Identity)
    return x


def hand_ff(ff: nn.Module, x: Tensor) -> Tensor:
    hidden = F.gelu(x @ ff.proj_in.weight.T + ff.proj_in.bias)
    return hidden @ ff.proj_out.weight.T + ff.proj_out.bias


def hand_attention(
    attn: Attention, x, context=None, mask=None, causal=False, prev=None, infused=None, bias=None
):
    """(out (b n d), logits (b h i j) before masking, probs (b h i j))."""
    src = x if context is None else context
    qk_shift = 0 if infused is None else infused

    def heads(t: Tensor) -> Tensor:
        return rearrange(t, "b n (h e) -> b h n e", h=H)

    q = heads((x + qk_shift) @ attn.proj.to_q.weight.T)
    k = heads((src + qk_shift) @ attn.proj.to_k.weight.T)
    v = heads(src @ attn.proj.to_v.weight.T)
    add = bias if prev is None else prev if bias is None else bias + prev
    logits = torch.einsum("bhid,bhjd->bhij", q, k) * DH**-0.5 + (0 if add is None else add)
    key_mask = None if mask is None else mask[:, None, None, :]
    probs = reference_probs(q, k, v, mask=key_mask, bias=add, causal=causal)
    out = rearrange(probs @ v, "b h n e -> b n (h e)") @ attn.to_out.weight.T
    return out, logits, probs


def hand_residual(rule: nn.Module, branch: Tensor, x: Tensor) -> Tensor:
    if isinstance(rule, GRUGating):
        y = rule.scale * branch
        r = torch.sigmoid(y @ rule.w_r.weight.T + x @ rule.u_r.weight.T)
        z = torch.sigmoid(y @ rule.w_z.weight.T + x @ rule.u_z.weight.T - rule.b_g)
        g = torch.tanh(y @ rule.w_g.weight.T + (r * x) @ rule.u_g.weight.T)
        return (1 - z) * x + z * g
    if isinstance(rule, ReZeroResidual):
        return x + rule.scale * rule.alpha * branch
    assert type(rule) is Residual
    return x + rule.scale * branch


def hand_stack(stack, x, mask=None, context=None, context_mask=None, chain=(), **attn_kw):
    """Pre-norm stack, one layer after the other; ``chain`` = kinds whose logits chain on."""
    prev, maps = {"a": None, "c": None}, []
    for kind, layer in zip(stack.types, stack.layers):
        h = hand_norm(layer["norm"], x)
        if kind == "f":
            out = hand_ff(layer["block"], h)
        else:
            kw = (
                dict(mask=mask, causal=stack.causal, **attn_kw)
                if kind == "a"
                else dict(context=context, mask=context_mask)
            )
            out, logits, probs = hand_attention(layer["block"], h, prev=prev[kind], **kw)
            prev[kind] = logits if kind in chain else None
            maps.append(probs)
        x = hand_residual(layer["residual"], out, x)
    return hand_norm(stack.final_norm, x), maps


def parts(stack):
    return [(layer["norm"], layer["block"], layer["residual"]) for layer in stack.layers]


# ---------------------------------------------------------------- norms, rezero, pre/post norm


@pytest.mark.parametrize(
    "flag, kind", [(None, LayerNorm), ("use_rmsnorm", RMSNorm), ("use_scalenorm", ScaleNorm)]
)
def test_norm_flag_fills_every_norm_slot_and_matches_formula(flag, kind):
    flags = {flag: True} if flag else {}
    stack = randomize(Encoder(depth=2, cross_attend=True, **SMALL, **flags))
    assert all(type(norm) is kind for norm, _, _ in parts(stack)) and len(stack.layers) == 6
    assert type(stack.final_norm) is kind
    stack = randomize(Encoder(depth=1, **SMALL, **flags))
    x = rand(B, N, D)
    (n1, attn, _), (n2, ff, _) = parts(stack)
    x1 = x + hand_attention(attn, hand_norm(n1, x))[0]  # pre-norm: x + Attn(N x)
    expected = hand_norm(stack.final_norm, x1 + hand_ff(ff, hand_norm(n2, x1)))
    torch.testing.assert_close(stack(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "flags, match",
    [
        (dict(use_rmsnorm=True, use_scalenorm=True), "normalisation"),
        (dict(use_rezero=True, use_rmsnorm=True), "use_rmsnorm"),
        (dict(use_rezero=True, gate_residual=True), "gate_residual"),
        (dict(use_rezero=True, pre_norm=False), "pre_norm"),
    ],
)
def test_conflicting_norm_flags_are_refused(flags, match):
    with pytest.raises(ValueError, match=match):
        Encoder(depth=1, **SMALL, **flags)


def test_rezero_has_no_norms_and_is_identity_at_init():
    stack = Decoder(depth=3, **SMALL, use_rezero=True).double()
    assert all(type(n) is nn.Identity and type(r) is ReZeroResidual for n, _, r in parts(stack))
    assert type(stack.final_norm) is nn.Identity
    x = rand(B, N, D)
    assert torch.equal(stack(x), x)
    stack = randomize(Decoder(depth=1, **SMALL, use_rezero=True))  # alpha != 0 now
    (_, attn, r1), (_, ff, r2) = parts(stack)
    x1 = x + r1.alpha * hand_attention(attn, x, causal=True)[0]  # no norm anywhere
    torch.testing.assert_close(stack(x), x1 + r2.alpha * hand_ff(ff, x1), rtol=1e-10, atol=1e-10)


def test_post_norm_one_layer_formula():
    stack = randomize(Encoder(depth=1, **SMALL, pre_norm=False))
    assert type(stack.final_norm) is nn.Identity
    (n1, attn, _), (n2, ff, _) = parts(stack)
    x, mask = rand(B, N, D), torch.tensor([[True] * N, [True] * (N - 2) + [False] * 2])
    x1 = hand_norm(n1, x + hand_attention(attn, x, mask=mask)[0])
    expected = hand_norm(n2, x1 + hand_ff(ff, x1))
    torch.testing.assert_close(stack(x, mask=mask), expected, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- layer orders


def test_macaron_order_and_half_step_feedforwards():
    stack = Encoder(depth=2, **SMALL, macaron=True)
    assert stack.types == ("f", "a", "f") * 2
    assert [r.scale for _, _, r in parts(stack)] == [0.5, 1.0, 0.5] * 2
    stack = randomize(Encoder(depth=1, **SMALL, macaron=True))
    x = rand(B, N, D)
    (n1, ff1, _), (n2, attn, _), (n3, ff2, _) = parts(stack)
    x1 = x + 0.5 * hand_ff(ff1, hand_norm(n1, x))
    x2 = x1 + hand_attention(attn, hand_norm(n2, x1))[0]
    x3 = x2 + 0.5 * hand_ff(ff2, hand_norm(n3, x2))
    torch.testing.assert_close(stack(x), hand_norm(stack.final_norm, x3), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "depth, coef, order", [(6, 6, "aaaaaaffffff"), (4, 2, "aaafafff"), (2, 2, "aaff")]
)
def test_sandwich_order_of_the_paper(depth, coef, order):
    stack = randomize(Encoder(depth=depth, **SMALL, sandwich_coef=coef))
    assert "".join(stack.types) == order
    kinds = ["a" if isinstance(block, Attention) else "f" for _, block, _ in parts(stack)]
    assert "".join(kinds) == order
    x = rand(B, N, D)
    torch.testing.assert_close(stack(x), hand_stack(stack, x)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "flags, match",
    [
        (dict(depth=6, sandwich_coef=7), "sandwich_coef"),
        (dict(depth=4, sandwich_coef=2, macaron=True), "macaron"),
        (dict(depth=4, sandwich_coef=2, cross_attend=True), "cross"),
    ],
)
def test_sandwich_refusals(flags, match):
    with pytest.raises(ValueError, match=match):
        Encoder(**SMALL, **flags)


# ---------------------------------------------------------------- position-infused attention


def sinusoids(n: int, d: int) -> Tensor:
    """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...) (Vaswani et al. 3.5)."""
    p, i = torch.arange(n, dtype=torch.float64)[:, None], torch.arange(0, d, 2.0).double()
    angles = p / 10000 ** (i / d)
    table = torch.empty(n, d, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = torch.sin(angles), torch.cos(angles)
    return table


def test_position_infused_attention_values_are_position_free():
    attn = randomize(Attention(D, H, dim_head=DH))
    x, table = rand(B, N, D), rand(N, D, seed=5)
    ctx = PositionContext(q_len=N, k_len=N, infused=table)
    torch.testing.assert_close(attn(x, positions=ctx), hand_attention(attn, x, infused=table)[0])
    with torch.no_grad():  # zero queries: uniform weights, so the output is mean_j Wo Wv x_j
        attn.proj.to_q.weight.zero_()
    other = PositionContext(q_len=N, k_len=N, infused=rand(N, D, seed=6))
    torch.testing.assert_close(attn(x, positions=ctx), attn(x, positions=other))


def test_position_infused_stack_adds_nothing_to_the_residual_stream():
    stack = randomize(Decoder(depth=2, **SMALL, position_infused_attn=True))
    x = rand(B, N, D)
    expected, _ = hand_stack(stack, x, infused=sinusoids(N, D))
    torch.testing.assert_close(stack(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "flag", ["position_infused_attn", "rotary_pos_emb", "rel_pos_bias", "alibi_pos_bias", None]
)
def test_wrapper_drops_absolute_positions_for_relative_layers(flag):
    flags = {flag: True} if flag else {}
    model = lm(Decoder(depth=1, **SMALL, **flags))
    assert (model.pos_emb is None) == (flag is not None)


# ---------------------------------------------------------------- residual rules and attention


def test_gate_residual_is_gru_everywhere_and_matches_gtrxl_equations():
    stack = randomize(Encoder(depth=1, **SMALL, gate_residual=True))
    assert all(type(r) is GRUGating for _, _, r in parts(stack))
    (n1, attn, g1), (n2, ff, g2) = parts(stack)
    x = rand(B, N, D)
    x1 = hand_residual(g1, hand_attention(attn, hand_norm(n1, x))[0], x)
    x2 = hand_residual(g2, hand_ff(ff, hand_norm(n2, x1)), x1)
    torch.testing.assert_close(stack(x), hand_norm(stack.final_norm, x2), rtol=1e-10, atol=1e-10)


def test_residual_attn_second_layer_logits_include_the_first():
    stack = randomize(Decoder(depth=2, **SMALL, residual_attn=True))
    x, mask = rand(B, N, D), torch.tensor([[True] * N, [False] + [True] * (N - 1)])
    out, inter = stack(x, mask=mask, return_hiddens=True, return_attn=True)
    expected, maps = hand_stack(stack, x, mask=mask, chain="a")
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    for got, want in zip(inter.attn_maps, maps, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    unchained, _ = hand_stack(stack, x, mask=mask)
    assert not torch.allclose(out, unchained, atol=1e-4)


def test_cross_residual_attn_chains_only_cross_attention_logits():
    stack = randomize(Encoder(depth=2, **SMALL, cross_attend=True, cross_residual_attn=True))
    x, ctx = rand(B, N, D), rand(B, 4, D, seed=3)
    ctx_mask = torch.tensor([[True] * 4, [True, True, False, True]])
    out, inter = stack(x, context=ctx, context_mask=ctx_mask, return_hiddens=True, return_attn=True)
    expected, maps = hand_stack(stack, x, context=ctx, context_mask=ctx_mask, chain="c")
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    for got, want in zip(inter.attn_maps, maps, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- reversible


def t5_bias_by_hand(table: Tensor, n: int, causal: bool) -> Tensor:
    """(h, n, n) T5 bias for distances inside the exact range (n <= 8 with 32 buckets)."""
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]  # key - query
    bucket = (-rel).clamp(min=0) if causal else rel.abs() + 16 * (rel > 0)
    return rearrange(table[bucket], "i j h -> h i j")


def hand_reversible(stack, x, mask=None, bias=None) -> Tensor:
    """x1 = x2 = x; y1 = x1 + Attn(LN x2); y2 = x2 + FF(LN y1); out = LN_final((y1 + y2) / 2)."""
    x1 = x2 = x
    layers = parts(stack)
    for (n_a, attn, _), (n_f, ff, _) in zip(layers[0::2], layers[1::2], strict=True):
        h = hand_norm(n_a, x2)
        y1 = x1 + hand_attention(attn, h, mask=mask, causal=stack.causal, bias=bias)[0]
        x1, x2 = y1, x2 + hand_ff(ff, hand_norm(n_f, y1))
    return hand_norm(stack.final_norm, (x1 + x2) / 2)


def all_grads(model: nn.Module, forward) -> tuple[Tensor, dict[str, Tensor]]:
    model.zero_grad(set_to_none=True)
    out = forward()
    (out * rand(*out.shape, seed=9)).sum().backward()
    return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize(
    "stack_cls, flags, masked",
    [
        (Decoder, {}, False),
        (Decoder, dict(rel_pos_bias=True), False),
        (Encoder, {}, True),
        (Encoder, dict(rel_pos_bias=True), True),
    ],
)
def test_reversible_gradients_equal_plain_autograd(monkeypatch, stack_cls, flags, masked):
    from x_attn.layers import reversible

    stack = stack_cls(depth=3, **SMALL, reversible=True, **flags)
    model, tokens = lm(stack), TOKENS
    mask = torch.tensor([[True] * N, [True] * (N - 2) + [False] * 2]) if masked else None
    calls = []
    apply = reversible._ReversibleFunction.apply
    monkeypatch.setattr(
        reversible._ReversibleFunction, "apply", lambda *a: calls.append(1) or apply(*a)
    )
    out_rev, g_rev = all_grads(model.train(), lambda: model(tokens, mask=mask))
    assert calls == [1]  # train mode ran the recomputing backward
    out_plain, g_plain = all_grads(model.eval(), lambda: model(tokens, mask=mask))
    assert calls == [1]

    def by_hand() -> Tensor:
        h = model.token_emb.weight[tokens]
        if mask is not None:  # masked positions enter the stack as zeros (issue 7.12)
            h = h.masked_fill(~mask.unsqueeze(-1), 0.0)
        h = h if model.pos_emb is None else h + model.pos_emb.emb.weight[:N]
        bias = None
        if "rel_pos_bias" in flags:
            table = stack.positions.rel_pos.relative_attention_bias.weight
            bias = t5_bias_by_hand(table, N, stack.causal)
        out = hand_reversible(stack, h, mask=mask, bias=bias)
        return out @ model.to_logits.weight.T + model.to_logits.bias

    out_hand, g_hand = all_grads(model, by_hand)
    torch.testing.assert_close(out_rev, out_hand, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_plain, out_hand, rtol=1e-10, atol=1e-10)
    assert g_rev.keys() == g_hand.keys() and len(g_rev) > 20
    for name, grad in g_hand.items():
        assert grad.abs().sum() > 0 or "token_emb" in name, name
        torch.testing.assert_close(g_rev[name], grad, rtol=1e-8, atol=1e-10, msg=name)
        torch.testing.assert_close(g_plain[name], grad, rtol=1e-8, atol=1e-10, msg=name)


@pytest.mark.parametrize(
    "flags, name",
    [
        (dict(residual_attn=True), "residual_attn"),
        (dict(gate_residual=True), "gate_residual"),
        (dict(macaron=True), "macaron"),
        (dict(cross_attend=True), "cross_attend"),
        (dict(pre_norm=False), "pre_norm=False"),
        (dict(use_rezero=True), "use_rezero"),
        (dict(sandwich_coef=1), "sandwich_coef"),
    ],
)
def test_reversible_refuses_incompatible_flags(flags, name):
    with pytest.raises(ValueError, match=f"reversible.*{name}"):
        Decoder(depth=2, **SMALL, reversible=True, **flags)


def test_reversible_refuses_mems_cache_and_attention_maps():
    stack = Decoder(depth=2, **SMALL, reversible=True).double()
    x = rand(B, N, D)
    for kwargs in (
        dict(mems=[rand(B, 2, D)] * 2),
        dict(cache=KVCache.empty(2)),
        dict(return_attn=True),
    ):
        with pytest.raises(ValueError, match="reversible"):
            stack(x, **kwargs)


# ---------------------------------------------------------------- memory tokens


def test_memory_tokens_are_prepended_always_visible_and_stripped():
    m = 3
    model, tokens = lm(Encoder(depth=2, **SMALL), num_memory_tokens=m), TOKENS
    mask = torch.tensor([[True] * N, [False, False] + [True] * (N - 2)])
    out = model(tokens, mask=mask, return_embeddings=True)
    assert out.shape == (B, N, D)
    h = model.token_emb.weight[tokens].masked_fill(~mask.unsqueeze(-1), 0.0)  # issue 7.12
    # padding takes no position: row 1's real tokens count from 0, its two pads keep 0 and 1
    pos = torch.tensor([list(range(N)), [0, 1] + list(range(N - 2))])
    h = h + model.pos_emb.emb.weight[pos]
    full = torch.cat((model.memory_tokens.expand(B, -1, -1), h), dim=1)
    full_mask = torch.cat((torch.ones(B, m, dtype=torch.bool), mask), dim=1)
    expected = hand_stack(model.attn_layers, full, mask=full_mask)[0][:, m:]
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    _, maps = model(tokens, mask=mask, return_attn=True)
    for probs in maps:  # (b, h, m + n, m + n): memory columns > 0 in every row, padding = 0
        assert (probs[..., :m] > 0).all()
        assert (probs[..., m:].masked_select(~mask[:, None, None, :]) == 0).all()
    with torch.no_grad():
        model.memory_tokens.add_(rand(m, D, seed=4))
    changed = model(tokens, mask=mask, return_embeddings=True)
    assert ((changed - out).abs().amax(dim=-1) > 1e-6).all()  # every real position moved


def test_memory_tokens_keep_decoder_causal_for_real_tokens():
    model, tokens = lm(Decoder(depth=2, **SMALL), num_memory_tokens=2).eval(), TOKENS
    edited = tokens.clone()
    edited[:, 3] = (tokens[:, 3] + 1) % V
    before, after = model(tokens), model(edited)
    assert before.shape == (B, N, V)
    torch.testing.assert_close(before[:, :3], after[:, :3], rtol=0, atol=0)
    assert ((before[:, 3:] - after[:, 3:]).abs().amax(dim=-1) > 1e-8).all()
    with torch.no_grad():  # a random change (a constant shift would vanish in LayerNorm)
        model.memory_tokens.add_(rand(2, D, seed=4))
    assert ((model(tokens) - before).abs().amax(dim=-1) > 1e-8).all()  # position 0 sees memory


# ---------------------------------------------------------------- dropouts


@pytest.mark.parametrize(
    "emb, flags, kernel",
    [
        (0.3, {}, "sdpa"),
        (0.0, dict(attn_dropout=0.3), "sdpa"),
        (0.0, dict(attn_dropout=0.3, attn_flash=False), "manual"),
        (0.0, dict(ff_dropout=0.3), "sdpa"),
    ],
)
def test_dropouts_act_in_train_mode_only(emb, flags, kernel):
    def build(emb_dropout, **kw):
        layers = Encoder(depth=1, **SMALL, **kw)
        return lm(layers, emb_dropout=emb_dropout)

    model = build(emb, **flags)
    assert model.attn_layers.layers[0]["block"].kernel.name == kernel
    plain = build(0.0, **{k: v for k, v in flags.items() if "dropout" not in k}).train()
    tokens = TOKENS
    model.train()
    first, second = model(tokens), model(tokens)
    assert not torch.allclose(first, second)
    torch.testing.assert_close(plain(tokens), plain(tokens), rtol=0, atol=0)  # same weights
    model.eval()
    torch.testing.assert_close(model(tokens), model(tokens), rtol=0, atol=0)
    torch.testing.assert_close(model(tokens), plain.eval()(tokens), rtol=0, atol=0)
