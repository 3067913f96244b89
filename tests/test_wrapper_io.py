"""TransformerWrapper input/output options: embeddings, custom modules, pooling, prepending.

Two kinds of reference:
* x-transformers 2.31 on identical weights (skipped when it is not installed), for the options
  both libraries share. Its softmax runs in float32, so the tolerance is 1e-5.
* the defining formula or an invariant, independent of x-transformers: gradient fractions,
  unit norms, masked means, permutation invariance of pooled encoders without positions,
  padding that has no effect.

Shape legend: b batch, n sequence, p prepended positions, d model dim, e embedding dim,
v vocabulary, k class / pooled tokens.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from x_attn import Decoder, Encoder, TransformerWrapper

VOCAB, DIM, N, B = 20, 16, 7, 2
LAYERS = dict(dim=DIM, depth=2, heads=2, attn_dim_head=8)
TOL = dict(rtol=1e-5, atol=1e-5)


def _jitter(model: nn.Module, scale: float = 0.1) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


def ours(stack=Encoder, **wrapper) -> TransformerWrapper:
    torch.manual_seed(0)
    return TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=16, attn_layers=stack(**LAYERS), **wrapper
    ).eval()


def pair(stack: str, **wrapper):
    """(x_attn model, x-transformers model) with the same weights."""
    xt = pytest.importorskip("x_transformers")
    import x_attn
    from x_attn.interop import from_x_transformers

    torch.manual_seed(0)
    theirs = xt.TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=16, attn_layers=getattr(xt, stack)(**LAYERS), **wrapper
    )
    theirs = _jitter(theirs)
    mine = TransformerWrapper(
        num_tokens=VOCAB,
        max_seq_len=16,
        attn_layers=getattr(x_attn, stack)(**LAYERS),
        **wrapper,
    ).eval()
    from_x_transformers(theirs, mine)
    return mine, theirs


def tokens(n: int = N, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, n), generator=torch.Generator().manual_seed(seed))


def padding(n: int = N, inner: bool = True) -> torch.Tensor:
    """Right padding in row 0; row 1 padded inside (``inner``) or at its end."""
    mask = torch.ones(B, n, dtype=torch.bool)
    mask[0, -2:] = False
    mask[1, 1 if inner else -1] = False
    return mask


# ------------------------------------------------------------------------------------------------
# against x-transformers on identical weights

CASES = {
    "plain": ("Decoder", {}, {}),
    "l2norm_embed": ("Decoder", {"l2norm_embed": True}, {}),
    "post_emb_norm": ("Decoder", {"post_emb_norm": True}, {}),
    "emb_dim": ("Decoder", {"emb_dim": 12}, {}),
    "emb_frac_gradient": ("Decoder", {"emb_frac_gradient": 0.25}, {}),
    "tie_embedding": ("Decoder", {"tie_embedding": True}, {}),
    "tie_embedding_scale": ("Decoder", {"tie_embedding": True, "tie_embedding_scale": 0.7}, {}),
    "embed_num_tokens": ("Encoder", {"embed_num_tokens": {"segment": 3}}, {"segment": True}),
    "memory_tokens": ("Encoder", {"num_memory_tokens": 2}, {"mask": True}),
    "average_pool_embed": ("Encoder", {"average_pool_embed": True}, {"mask": True}),
    "use_cls_token": ("Encoder", {"use_cls_token": True}, {"mask": True}),
    "num_cls_tokens=2": ("Encoder", {"use_cls_token": True, "num_cls_tokens": 2}, {}),
    "cls+memory": ("Encoder", {"use_cls_token": True, "num_memory_tokens": 2}, {"mask": True}),
    "attn_pool": ("Encoder", {"attn_pool": True, "num_pooled_tokens": 3}, {"mask": True}),
    "dim_pooled_tokens": ("Encoder", {"attn_pool": True, "dim_pooled_tokens": 10}, {}),
    "squeeze_out_last_dim": (
        "Encoder",
        {"logits_dim": 1, "average_pool_embed": True, "squeeze_out_last_dim": True},
        {"mask": True},
    ),
    "prepend_embeds": ("Decoder", {}, {"prepend": True}),
}


def _inputs(options: dict, emb_dim: int = DIM) -> dict:
    """Inputs for both libraries. Padding on the right only: x_attn gives padding no position
    (each row numbers its real tokens), x-transformers numbers every index, so padding before
    a real token would shift its absolute position in one library only."""
    kwargs = {}
    if options.get("mask"):
        kwargs["mask"] = padding(inner=False)
    if options.get("segment"):
        gen = torch.Generator().manual_seed(3)
        kwargs["embed_ids"] = {"segment": torch.randint(0, 3, (B, N), generator=gen)}
    if options.get("prepend"):
        gen = torch.Generator().manual_seed(4)
        kwargs["prepend_embeds"] = torch.randn(B, 3, emb_dim, generator=gen)
        kwargs["prepend_mask"] = torch.tensor([[True, False, True], [True, True, True]])
        kwargs["mask"] = padding(inner=False)
    return kwargs


def _valid_positions(out: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """Bool index over the leading axes of ``out``: rows, or (rows, real positions)."""
    mask = kwargs.get("mask")
    if out.ndim < 3 or mask is None or out.shape[1] < N:
        return torch.ones(out.shape[:1], dtype=torch.bool)
    if "prepend_mask" in kwargs:
        mask = torch.cat((kwargs["prepend_mask"], mask), dim=1)
    return mask


@pytest.mark.parametrize("name", list(CASES))
def test_outputs_and_gradients_equal_x_transformers(name: str) -> None:
    stack, wrapper, options = CASES[name]
    mine, theirs = pair(stack, **wrapper)
    x, kwargs = tokens(), _inputs(options, wrapper.get("emb_dim", DIM))
    a, b = mine(x, **kwargs), theirs(x, **kwargs)
    assert a.shape == b.shape
    valid = _valid_positions(a, kwargs)  # outputs at padded queries are arbitrary in both
    torch.testing.assert_close(a[valid], b[valid], **TOL)
    a[valid].square().sum().backward()
    b[valid].square().sum().backward()
    grads = {n: p.grad for n, p in theirs.named_parameters() if p.grad is not None}
    tok_theirs = grads["token_emb.emb.weight"]
    torch.testing.assert_close(mine.token_emb.weight.grad, tok_theirs, **TOL)


# ------------------------------------------------------------------------------------------------
# formulas and invariants (no x-transformers needed)


def _stack_input(model: TransformerWrapper, *args, **kwargs) -> torch.Tensor:
    seen = []
    hook = model.attn_layers.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    model(*args, **kwargs)
    hook.remove()
    return seen[0]


def test_l2norm_embed_feeds_unit_token_and_position_vectors() -> None:
    model = ours(Decoder, l2norm_embed=True)
    x = tokens()
    tok = F.normalize(model.token_emb.weight[x], dim=-1)
    pos = F.normalize(model.pos_emb.emb.weight[:N], dim=-1)
    torch.testing.assert_close(_stack_input(model, x), tok + pos)


def test_post_emb_norm_is_layernorm_of_the_summed_embeddings() -> None:
    model = ours(Decoder, post_emb_norm=True)
    with torch.no_grad():
        model.post_emb_norm.weight.uniform_(0.5, 1.5)
    x = tokens()
    summed = model.token_emb.weight[x] + model.pos_emb.emb.weight[:N]
    expected = F.layer_norm(summed, (DIM,)) * model.post_emb_norm.weight
    torch.testing.assert_close(_stack_input(model, x), expected)


def test_emb_dim_projects_embeddings_and_positions_of_width_e() -> None:
    model = ours(Decoder, emb_dim=12)
    x = tokens()
    summed = model.token_emb.weight[x] + model.pos_emb.emb.weight[:N]
    assert summed.shape[-1] == 12
    torch.testing.assert_close(_stack_input(model, x), model.project_emb(summed))


@pytest.mark.parametrize("frac", [0.1, 0.5])
def test_emb_frac_gradient_scales_only_the_embedding_gradient(frac: float) -> None:
    full, part = ours(Decoder).double(), ours(Decoder, emb_frac_gradient=frac).double()
    part.load_state_dict(full.state_dict())
    x = tokens()
    a, b = full(x), part(x)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)  # forward unchanged
    a.square().sum().backward()
    b.square().sum().backward()
    for (name, p), q in zip(full.named_parameters(), part.parameters()):
        scale = frac if name in ("token_emb.weight", "pos_emb.emb.weight") else 1.0
        torch.testing.assert_close(q.grad, p.grad * scale, rtol=1e-10, atol=1e-12)


def test_extra_embeddings_are_added_to_the_tokens() -> None:
    model = ours(Encoder, embed_num_tokens={"segment": 3, "lang": 2})
    x, seg, lang = tokens(), torch.randint(0, 3, (B, N)), torch.randint(0, 2, (B, N))
    expected = (
        model.token_emb.weight[x]
        + model.pos_emb.emb.weight[:N]
        + model.embeds["segment_embed"].weight[seg]
        + model.embeds["lang_embed"].weight[lang]
    )
    got = _stack_input(model, x, embed_ids={"segment": seg, "lang": lang})
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="'embed_ids' must give ids for exactly"):
        model(x, embed_ids={"segment": seg})


def test_sum_embeds_are_added_before_the_stack() -> None:
    model = ours(Decoder)
    x, extra = tokens(), torch.randn(B, N, DIM)
    torch.testing.assert_close(
        _stack_input(model, x, sum_embeds=extra), _stack_input(model, x) + extra
    )


class TwoTables(nn.Module):
    """A custom embedder that takes a second input."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Embedding(VOCAB, DIM), nn.Embedding(VOCAB, DIM)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(y)


class Pointer(nn.Module):
    """A custom head: logits against embeddings given at call time."""

    def forward(self, h: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return h @ candidates.transpose(1, 2)


def test_custom_token_emb_and_to_logits_receive_their_kwargs() -> None:
    model = ours(Decoder, token_emb=TwoTables(), to_logits=Pointer(), use_abs_pos_emb=False)
    x, y, cands = tokens(), tokens(seed=2), torch.randn(B, 5, DIM)
    expected_in = model.token_emb.a.weight[x] + model.token_emb.b.weight[y]
    torch.testing.assert_close(
        _stack_input(model, x, token_emb_kwargs={"y": y}, to_logits_kwargs={"candidates": cands}),
        expected_in,
    )
    h = model(x, return_embeddings=True, token_emb_kwargs={"y": y})
    logits = model(x, token_emb_kwargs={"y": y}, to_logits_kwargs={"candidates": cands})
    torch.testing.assert_close(logits, h @ cands.transpose(1, 2))


def test_tied_logits_use_the_embedding_matrix_times_the_scale() -> None:
    model = ours(Decoder, tie_embedding=True)
    h = model(tokens(), return_embeddings=True)
    torch.testing.assert_close(model(tokens()), (h @ model.token_emb.weight.t()) * DIM**-0.5)


def test_average_pool_is_the_masked_mean_of_the_embeddings() -> None:
    plain, pooled = ours(), ours(average_pool_embed=True)
    pooled.load_state_dict(plain.state_dict())
    x, mask = tokens(), padding()
    h = plain(x, mask=mask, return_embeddings=True)
    expected = torch.stack([h[i][mask[i]].mean(dim=0) for i in range(B)])
    torch.testing.assert_close(pooled(x, mask=mask, return_embeddings=True), expected)
    torch.testing.assert_close(pooled(x, mask=mask), plain.to_logits(expected))


@pytest.mark.parametrize(
    "wrapper",
    [
        {"average_pool_embed": True},
        {"use_cls_token": True},
        {"use_cls_token": True, "num_cls_tokens": 2},
        {"attn_pool": True, "num_pooled_tokens": 2},
        {"attn_pool": True, "attn_pool_depth": 2},
        {"attn_pool": True, "attn_pool_depth": 2, "dim_pooled_tokens": 10},
    ],
    ids=["mean", "cls", "cls2", "attn_pool", "attn_pool_depth2", "attn_pool_depth2_dim10"],
)
def test_pooled_encoder_without_positions_is_permutation_invariant(wrapper) -> None:
    model = _jitter(ours(use_abs_pos_emb=False, **wrapper))
    x, mask = tokens(), padding()
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(5))
    a = model(x, mask=mask)
    b = model(x[:, perm], mask=mask[:, perm])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    y = torch.where(mask, x, (x + 3) % VOCAB)  # padded tokens have no effect
    torch.testing.assert_close(model(y, mask=mask), a, rtol=1e-5, atol=1e-6)
    assert (model(y) - a).abs().max() > 1e-4  # without the mask they would


def test_cls_outputs_are_the_stack_outputs_at_the_class_positions() -> None:
    model = _jitter(ours(use_cls_token=True, num_cls_tokens=2))
    x = tokens()
    emb = model.token_emb.weight[x] + model.pos_emb.emb.weight[:N]
    stream = torch.cat((model.cls_token.expand(B, -1, -1), emb), dim=1)
    torch.testing.assert_close(model(x, return_embeddings=True), model.attn_layers(stream)[:, :2])


def test_attn_pool_on_a_decoder_goes_to_the_intermediates() -> None:
    model = ours(Decoder, attn_pool=True, num_pooled_tokens=3)
    logits, inter = model(tokens(), return_intermediates=True)
    assert logits.shape == (B, N, VOCAB)
    assert inter.attn_pooled_tokens.shape == (B, 3, DIM)


def test_prepended_embeddings_open_the_stream() -> None:
    model = _jitter(ours(Decoder))
    x, pre = tokens(), torch.randn(B, 3, DIM)
    emb = model.token_emb.weight[x] + model.pos_emb.emb.weight[:N]
    expected = model.attn_layers(torch.cat((pre, emb), dim=1))
    got = model(x, prepend_embeds=pre, return_embeddings=True)
    torch.testing.assert_close(got, expected)
    excised = model(x, prepend_embeds=pre, excise_prepend_embeds=True, return_embeddings=True)
    torch.testing.assert_close(excised, expected[:, 3:])


def test_masked_prepended_embeddings_have_no_effect() -> None:
    model = _jitter(ours(Decoder))
    x, pre = tokens(), torch.randn(B, 3, DIM)
    keep = torch.tensor([[True, False, False], [False, True, True]])
    other = torch.where(keep.unsqueeze(-1), pre, torch.randn(B, 3, DIM))
    a = model(x, prepend_embeds=pre, prepend_mask=keep, excise_prepend_embeds=True)
    b = model(x, prepend_embeds=other, prepend_mask=keep, excise_prepend_embeds=True)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_prepend_with_cache_equals_the_full_forward() -> None:
    model = _jitter(ours(Decoder))
    x, pre = tokens(), torch.randn(B, 3, DIM)
    full = model(x, prepend_embeds=pre, excise_prepend_embeds=True)
    with torch.no_grad():
        first, cache = model(x[:, :4], prepend_embeds=pre, return_cache=True)
        steps = [first[:, -1]]
        for t in range(4, N):
            step = x[:, t : t + 1]
            logits, cache = model(step, prepend_embeds=pre, cache=cache, return_cache=True)
            steps.append(logits[:, -1])
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 3:].detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"average_pool_embed": True, "use_cls_token": True}, ValueError, "choose one"),
        ({"use_cls_token": True, "stack": Decoder}, ValueError, "bidirectional"),
        ({"num_cls_tokens": 2}, ValueError, "needs use_cls_token"),
        ({"num_pooled_tokens": 2}, ValueError, "set attn_pool=True"),
        ({"emb_frac_gradient": 0.0}, ValueError, r"in \(0, 1\]"),
        ({"to_logits": Pointer(), "logits_dim": 3}, ValueError, "cannot be combined"),
        ({"tie_embedding": True, "emb_dim": 12}, ValueError, "width dim=16"),
        ({"l2norm_embed": True, "token_emb": TwoTables()}, ValueError, "custom token_emb"),
        ({"embed_num_tokens": {"a b": 2}}, ValueError, "keys must be names"),
        ({"logits_bias": True, "tie_embedding": True}, ValueError, "has no bias"),
        ({"logits_bias": False, "to_logits": Pointer()}, ValueError, "custom to_logits"),
        ({"logits_bias": 0}, TypeError, "'logits_bias' must be bool or None"),
    ],
)
def test_bad_combinations_are_refused_at_construction(kwargs, error, match) -> None:
    stack = kwargs.pop("stack", Encoder)
    with pytest.raises(error, match=match):
        ours(stack, **kwargs)


def test_logits_bias_false_is_the_default_head_without_its_bias() -> None:
    """logits_bias=False: the same logits as the default head with its bias at zero."""
    torch.manual_seed(0)
    plain = ours(Decoder)
    torch.manual_seed(0)
    no_bias = ours(Decoder, logits_bias=False)
    assert plain.to_logits.bias is not None and no_bias.to_logits.bias is None
    with torch.no_grad():
        plain.to_logits.bias.zero_()
    no_bias.load_state_dict(plain.state_dict(), strict=False)
    x = tokens()
    torch.testing.assert_close(no_bias(x), plain(x), rtol=0, atol=0)


def test_pooling_refuses_cache_and_mems() -> None:
    model = ours(average_pool_embed=True)
    with pytest.raises(ValueError, match="cannot run with a KV cache or mems"):
        model(tokens(), return_cache=True)


def test_module_kwargs_for_built_in_modules_are_refused() -> None:
    model = ours(Decoder)
    with pytest.raises(ValueError, match="token_emb_kwargs"):
        model(tokens(), token_emb_kwargs={"y": 1})
    with pytest.raises(ValueError, match="to_logits_kwargs"):
        model(tokens(), to_logits_kwargs={"y": 1})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"l2norm_embed": "yes"}, "'l2norm_embed' must be bool, got str"),
        ({"post_emb_norm": 1}, "'post_emb_norm' must be bool, got int"),
        ({"emb_frac_gradient": "0.5"}, "'emb_frac_gradient' must be int or float"),
        ({"num_cls_tokens": 1.5}, "'num_cls_tokens' must be int, got float"),
        ({"emb_dim": True}, "'emb_dim' must be int or None, got bool"),
        ({"tie_embedding_scale": "x"}, "'tie_embedding_scale' must be int or float or None"),
    ],
)
def test_wrapper_flags_are_type_checked(kwargs, match) -> None:
    with pytest.raises(TypeError, match=match):
        ours(**kwargs)
