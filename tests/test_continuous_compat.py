"""ContinuousTransformerWrapper options and ContinuousAutoregressiveWrapper.

References: x-transformers 2.31 on identical weights (outputs, generation; skipped when it is
not installed), the Gaussian negative log-likelihood and masked means written out, rollouts
replayed by hand under the same random stream, and the uncached path for the cached one.

Shape legend: b batch, n sequence, d feature dim, k rollout steps, t generated vectors.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from x_attn import ContinuousAutoregressiveWrapper, ContinuousTransformerWrapper, Decoder

D_IN, D_OUT, DIM = 5, 3, 16
LAYERS = dict(dim=DIM, depth=2, heads=2, attn_dim_head=8)
TOL = dict(rtol=1e-5, atol=1e-5)


def net(**wrapper) -> ContinuousTransformerWrapper:
    torch.manual_seed(0)
    wrapper = {"dim_in": D_IN, "dim_out": D_OUT, "max_seq_len": 32, **wrapper}
    model = ContinuousTransformerWrapper(attn_layers=Decoder(**LAYERS), **wrapper)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.double().eval()


def continuous_pair(dim_out: int = D_OUT, **wrapper):
    """(x_attn, x-transformers) ContinuousTransformerWrappers with the same weights."""
    pytest.importorskip("x_transformers")
    from xt_pairs import token_pair

    return token_pair(
        "Decoder",
        cls="ContinuousTransformerWrapper",
        dim_in=D_IN,
        dim_out=dim_out,
        max_seq_len=32,
        layers=LAYERS,
        **wrapper,
    )


def data(b: int = 2, n: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, n, D_IN, generator=torch.Generator().manual_seed(seed)).double()


# ------------------------------------------------------------------------------------------------
# the wrapper


@pytest.mark.parametrize(
    "wrapper",
    [
        {},
        {"probabilistic": True},
        {"post_emb_norm": True},
        {"average_pool_embed": True},
        {"num_memory_tokens": 2},
    ],
    ids=["plain", "probabilistic", "post_emb_norm", "average_pool_embed", "memory_tokens"],
)
def test_outputs_equal_x_transformers(wrapper) -> None:
    mine, theirs = continuous_pair(**wrapper)
    x = data().float()
    mask = torch.tensor([[True] * 8, [True] * 5 + [False] * 3])
    a, b = mine(x, mask=mask), theirs(x, mask=mask)
    if a.ndim == 2:  # pooled
        torch.testing.assert_close(a, b, **TOL)
    else:  # per position: padded queries are arbitrary in both
        torch.testing.assert_close(a[..., mask, :], b[..., mask, :], **TOL)


def test_probabilistic_output_is_mean_and_exp_log_variance() -> None:
    model = net(probabilistic=True)
    x = data()
    h = model(x, return_embeddings=True)
    raw = model.project_out(h)
    out = model(x)
    assert out.shape == (2, 2, 8, D_OUT)
    torch.testing.assert_close(out[0], raw[..., 0::2])  # interleaved (mean, log-variance)
    torch.testing.assert_close(out[1], raw[..., 1::2].exp())


def test_custom_projections_and_identity_if_same_dim() -> None:
    proj_in, proj_out = nn.Linear(D_IN, DIM, bias=False), nn.Sequential(nn.Linear(DIM, 4))
    model = ContinuousTransformerWrapper(
        max_seq_len=8, attn_layers=Decoder(**LAYERS), project_in=proj_in, project_out=proj_out
    )
    x = torch.randn(2, 6, D_IN)
    torch.testing.assert_close(model(x), proj_out(model(x, return_embeddings=True)))
    same = ContinuousTransformerWrapper(
        max_seq_len=8,
        attn_layers=Decoder(**LAYERS),
        dim_in=DIM,
        dim_out=DIM,
        use_identity_if_same_dim=True,
    )
    assert isinstance(same.project_in, nn.Identity) and isinstance(same.project_out, nn.Identity)
    with pytest.raises(ValueError, match="give 'dim_in' or 'project_in', not both"):
        ContinuousTransformerWrapper(
            max_seq_len=8, attn_layers=Decoder(**LAYERS), dim_in=D_IN, project_in=proj_in
        )


def test_prepend_and_lens() -> None:
    model = net(use_abs_pos_emb=False)
    x, pre = data(), torch.randn(2, 3, DIM).double()
    expected = model.attn_layers(torch.cat((pre, model.project_in(x)), dim=1))
    torch.testing.assert_close(model(x, prepend_embeds=pre, return_embeddings=True), expected)
    lens = torch.tensor([8, 5])
    torch.testing.assert_close(model(x, lens=lens), model(x, mask=torch.arange(8) < lens[:, None]))


# ------------------------------------------------------------------------------------------------
# training


def test_default_losses_are_mse_l1_and_gaussian_nll() -> None:
    x = data(n=6)
    model = net(dim_out=D_IN)
    pred, y = model(x[:, :-1]), x[:, 1:]
    torch.testing.assert_close(ContinuousAutoregressiveWrapper(model)(x), (pred - y).pow(2).mean())
    l1 = ContinuousAutoregressiveWrapper(model, use_l1_loss=True)
    torch.testing.assert_close(l1(x), (pred - y).abs().mean())
    prob = net(dim_out=D_IN, probabilistic=True)
    mean, var = prob(x[:, :-1])
    nll = 0.5 * (var.clamp(min=1e-6).log() + (y - mean) ** 2 / var.clamp(min=1e-6))
    torch.testing.assert_close(ContinuousAutoregressiveWrapper(prob)(x), nll.mean())


def test_masked_losses() -> None:
    model = net(dim_out=D_IN)
    x, lens = data(n=7), torch.tensor([7, 4])
    err = (model(x[:, :-1]) - x[:, 1:]).pow(2)
    per_row = [err[i, : int(n) - 1].mean() for i, n in enumerate(lens)]
    every = torch.cat([err[i, : int(n) - 1].flatten() for i, n in enumerate(lens)]).mean()
    torch.testing.assert_close(ContinuousAutoregressiveWrapper(model)(x, lens=lens), every)
    equal = ContinuousAutoregressiveWrapper(model, equal_loss_weight_batch=True)
    torch.testing.assert_close(equal(x, lens=lens), torch.stack(per_row).mean())


def test_rollout_loss_replayed_by_hand() -> None:
    model, k = net(dim_out=D_IN), 3
    wrapper = ContinuousAutoregressiveWrapper(model)
    x = data(b=3, n=8)
    lens = torch.tensor([8, 4, 3])  # row 2 is too short for 3 steps and is left out
    torch.manual_seed(11)
    loss = wrapper(x, lens=lens, rollout_steps=k)
    torch.manual_seed(11)
    context = 1 + (torch.rand(2) * (lens[:2] - k)).long()  # the wrapper's draw, replayed
    errors = []
    for row in range(2):
        c = int(context[row])
        seq = x[row : row + 1, :c]
        for _ in range(k):  # feed each prediction back after the whole context
            seq = torch.cat((seq, model(seq)[:, -1:]), dim=1)
        errors.append((seq[0, c:] - x[row, c : c + k]).pow(2))
    torch.testing.assert_close(loss, torch.stack(errors).mean())


def test_probabilistic_rollout_feeds_back_a_sample() -> None:
    model, k = net(dim_out=D_IN, probabilistic=True), 2
    wrapper = ContinuousAutoregressiveWrapper(model)
    x = data(b=1, n=3)  # context length is 1: nothing random but the samples
    torch.manual_seed(3)
    loss = wrapper(x, rollout_steps=k)
    torch.manual_seed(3)
    torch.rand(1)  # the context draw
    first = model(x[:, :1])[..., -1:, :]
    sample = torch.normal(first[0], first[1].clamp(min=1e-5).sqrt())
    second = model(torch.cat((x[:, :1], sample), dim=1))[..., -1:, :]
    pred = torch.cat((first, second), dim=-2)
    var = pred[1].clamp(min=1e-6)
    nll = 0.5 * (var.log() + (x[:, 1:] - pred[0]) ** 2 / var)
    torch.testing.assert_close(loss, nll.mean())


# ------------------------------------------------------------------------------------------------
# generation


@pytest.mark.parametrize("probabilistic", [False, True])
def test_generate_cached_equals_uncached_and_the_manual_loop(probabilistic: bool) -> None:
    model = net(dim_out=D_IN, probabilistic=probabilistic, use_abs_pos_emb=False)
    wrapper = ContinuousAutoregressiveWrapper(model)
    start = data(n=3)
    kwargs = dict(temperature=0.0) if probabilistic else {}
    a = wrapper.generate(start, 5, **kwargs)
    b = wrapper.generate(start, 5, cache_kv=False, **kwargs)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    seq = start
    for _ in range(5):
        last = model(seq)[..., -1:, :]
        seq = torch.cat((seq, last[0] if probabilistic else last), dim=1)
    torch.testing.assert_close(a, seq[:, 3:], rtol=1e-9, atol=1e-10)
    one = wrapper.generate(start[0], 5, **kwargs)
    assert one.shape == (5, D_IN)


def test_sampled_generation_is_reproducible_and_spread_by_temperature() -> None:
    wrapper = ContinuousAutoregressiveWrapper(net(dim_out=D_IN, probabilistic=True))
    start = data(n=3)
    runs = [wrapper.generate(start, 4, generator=torch.Generator().manual_seed(5)) for _ in "ab"]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    cold = wrapper.generate(start, 1, temperature=0.0)
    warm = wrapper.generate(start, 1, temperature=1.0, generator=torch.Generator().manual_seed(5))
    mean, var = wrapper.net(start)[..., -1:, :]
    z = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5), dtype=mean.dtype)
    torch.testing.assert_close(cold, mean)
    torch.testing.assert_close(warm, mean + var.clamp(min=1e-5).sqrt() * z)


def test_generation_equals_x_transformers() -> None:
    xt = pytest.importorskip("x_transformers")
    mine, theirs = continuous_pair(dim_out=D_IN)
    start = data(n=3).float()
    a = ContinuousAutoregressiveWrapper(mine).generate(start, 6)
    b = xt.ContinuousAutoregressiveWrapper(theirs).generate(start, 6, cache_kv=False)
    torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (
            lambda: ContinuousAutoregressiveWrapper(net(), use_l1_loss=True, loss_fn=nn.MSELoss()),
            "not both",
        ),
        (
            lambda: ContinuousAutoregressiveWrapper(net(probabilistic=True), use_l1_loss=True),
            "Gaussian NLL",
        ),
        (lambda: ContinuousAutoregressiveWrapper(net(average_pool_embed=True)), "pools"),
        (lambda: ContinuousAutoregressiveWrapper(net())(data(), rollout_steps=8), "at least 9"),
        (lambda: ContinuousAutoregressiveWrapper(net()).generate(data(), 40), "max_seq_len"),
    ],
)
def test_bad_input(build, match) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_generate_names_itself_for_a_wrong_keyword() -> None:
    wrapper = ContinuousAutoregressiveWrapper(net())
    with pytest.raises(
        TypeError, match=r"ContinuousAutoregressiveWrapper\.generate.*'temperature'"
    ):
        wrapper.generate(data(n=3), 2, temprature=1.0)
    with pytest.raises(TypeError, match="the wrapper sets them itself"):
        wrapper.generate(data(n=3), 2, cache=None)


def test_no_max_seq_len_means_no_absolute_positions() -> None:
    from x_attn import Encoder

    torch.manual_seed(0)
    model = ContinuousTransformerWrapper(dim_in=D_IN, attn_layers=Encoder(**LAYERS)).eval()
    assert model.pos_emb is None and model.max_seq_len is None
    x = data().float()
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(x[:, perm]), model(x)[:, perm])  # order carries nothing
    with pytest.raises(TypeError, match="'max_seq_len' must be int or None"):
        ContinuousTransformerWrapper(dim_in=D_IN, max_seq_len="8", attn_layers=Encoder(**LAYERS))
