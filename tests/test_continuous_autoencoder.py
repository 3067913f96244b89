"""ContinuousTransformerAutoencoder and its latent bottlenecks.

References: the reconstruction loss written out in float64 from each row decoded alone (no
mask, no batching), the closed-form Gaussian KL checked against torch.distributions, the
reparameterisation replayed under the same random stream; invariants: padding has no effect
(NaN included), the decoder never sees the vector it predicts, encoding is a function.

Shape legend: b batch, n sequence, di input dim, l latent dim.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from x_attn import ContinuousTransformerAutoencoder
from x_attn.wrappers.latent_bottleneck import VariationalLatentBottleneck

DI, L, N = 5, 3, 6
LENS = torch.tensor([6, 4, 2])


def model(**kw) -> ContinuousTransformerAutoencoder:
    torch.manual_seed(0)
    kw = {"latents_dropout_prob": 0.0, **kw}
    ae = ContinuousTransformerAutoencoder(
        dim=16, enc_depth=1, dec_depth=2, max_seq_len=8, dim_input=DI, dim_latent=L, heads=2,
        attn_dim_head=8, **kw,
    )  # fmt: skip
    with torch.no_grad():
        for p in ae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return ae.double().eval()


def seq(b: int = 3, n: int = N) -> torch.Tensor:
    return torch.randn(b, n, DI, generator=torch.Generator().manual_seed(1)).double()


def reference_recon(ae, x, lens, loss_type):
    """Per-row and pooled reconstruction error, each row decoded alone from its own latent."""
    errors = []
    for row, n in zip(x, lens.tolist()):
        row = row[None, :n]
        token = ae.from_latent(ae.encode(row))[:, None]
        pred = ae.decoder(row[:, :-1], prepend_embeds=token)
        diff = pred - row
        errors.append((diff.abs() if loss_type == "l1" else diff**2).mean(-1)[0])
    per_row = torch.stack([e.mean() for e in errors])
    pooled = torch.cat(errors).sum() / lens.sum()
    return per_row, pooled


@pytest.mark.parametrize("loss_type", ["l1", "l2"])
@pytest.mark.parametrize("bottleneck_type", ["deterministic", "variational"])
def test_losses_equal_their_formulas(loss_type, bottleneck_type):
    ae = model(loss_type=loss_type, bottleneck_type=bottleneck_type)
    x = seq()
    x[1, 4:] = float("nan")  # padding holds anything
    loss, (recon, aux) = ae(x, lens=LENS, return_all_losses=True)
    loss.backward(retain_graph=True)
    assert all(torch.isfinite(p.grad).all() for p in ae.parameters() if p.grad is not None)
    per, (per_recon, per_aux) = ae(x, lens=LENS, return_all_losses=True, return_unreduced_loss=True)
    ref_rows, ref_pooled = reference_recon(ae, x, LENS, loss_type)
    torch.testing.assert_close(recon, ref_pooled, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(per_recon, ref_rows, rtol=1e-10, atol=1e-10)
    if bottleneck_type == "deterministic":
        assert aux is None and per_aux is None
        torch.testing.assert_close(loss, recon)
        return
    kl = []
    for row, n in zip(x, LENS.tolist()):
        pooled = ae.encoder(row[None, :n])  # mean of the outputs over the row's positions
        mean, log_var = ae.bottleneck.to_mean_log_var(pooled).chunk(2, dim=-1)
        q = Normal(mean, (0.5 * log_var).exp())
        kl.append(kl_divergence(q, Normal(torch.zeros_like(mean), 1.0)).sum())
    torch.testing.assert_close(per_aux, torch.stack(kl), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(aux, torch.stack(kl).mean())
    torch.testing.assert_close(loss, recon + aux)
    torch.testing.assert_close(per, per_recon + per_aux)


def test_decoder_never_sees_the_vector_it_predicts():
    """Prediction i depends on the latent and x_<i only: d pred_i / d x_j = 0 for j >= i."""
    ae = model()
    x = seq(1)
    token = ae.from_latent(ae.encode(x)).detach()[:, None]
    inputs = x[:, :-1].clone().requires_grad_()
    pred = ae.decoder(inputs, prepend_embeds=token)
    for i in range(N):
        (grad,) = torch.autograd.grad(pred[0, i].sum(), inputs, retain_graph=True)
        assert grad[0, i:].abs().sum() == 0
        if i > 0:
            assert grad[0, :i].abs().max() > 0


@pytest.mark.parametrize("bottleneck_type", ["deterministic", "variational"])
def test_encode_is_a_function_of_the_real_positions(bottleneck_type):
    ae = model(bottleneck_type=bottleneck_type)
    x = seq()
    z = ae.encode(x, lens=LENS)
    torch.testing.assert_close(z, ae.encode(x, lens=LENS), rtol=0, atol=0)
    x[2, 2:] = float("nan")
    for i, n in enumerate(LENS.tolist()):
        torch.testing.assert_close(ae.encode(x, lens=LENS)[i], ae.encode(x[i : i + 1, :n])[0])
    if bottleneck_type == "variational":  # eval mode: the posterior mean
        mean, _ = ae.bottleneck.posterior(ae.encoder(x[:1]))
        torch.testing.assert_close(ae.encode(x[:1]), mean)


def test_variational_samples_by_reparameterisation_while_training():
    ae = model(bottleneck_type="variational").train()
    x = seq()
    mean, log_var = ae.bottleneck.posterior(ae.encoder(x))
    torch.manual_seed(5)
    z = ae.encode(x)
    torch.manual_seed(5)
    eps = torch.randn_like(mean)
    torch.testing.assert_close(z, mean + (0.5 * log_var).exp() * eps)


def test_kl_floor_is_free_bits_per_row():
    torch.manual_seed(0)
    free = VariationalLatentBottleneck(4, 3, kl_div_floor=1.5).double()
    plain = VariationalLatentBottleneck(4, 3).double()
    plain.load_state_dict(free.state_dict())
    h = torch.randn(64, 4).double()
    _, kl = plain(h)
    _, floored = free(h)
    assert (kl < 1.5).any() and (kl > 1.5).any()
    torch.testing.assert_close(floored, torch.where(kl < 1.5, torch.full_like(kl, 1.5), kl))


def test_training_gradients_reach_every_parameter():
    ae = model(bottleneck_type="variational", deterministic_bottleneck_kwargs=None).train()
    ae(seq(), lens=LENS).backward()
    for name, p in ae.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert torch.isfinite(p.grad).all(), name


def test_dropped_latent_decodes_from_zero():
    """A row whose latent is dropped is decoded from the latent 0; the encoder gets no gradient."""
    ae = model(latents_dropout_prob=0.999999).train()
    x = seq()
    loss = ae(x)
    loss.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in ae.encoder.parameters())
    assert ae.bottleneck.proj.weight.grad.abs().max() == 0
    token = ae.from_latent(torch.zeros(3, L).double())[:, None]
    pred = ae.decoder(x[:, :-1], prepend_embeds=token)
    torch.testing.assert_close(loss, ((pred - x) ** 2).mean())


def test_tanh_activation_and_custom_bottleneck():
    ae = model(deterministic_bottleneck_kwargs={"activation": nn.Tanh()})
    z = ae.encode(seq() * 100)
    assert z.abs().max() <= 1
    custom = nn.Sequential(nn.Linear(16, L), nn.Sigmoid())
    ae = model(bottleneck=custom)
    z = ae.encode(seq())
    torch.testing.assert_close(z, custom(ae.encoder(seq())))
    assert ae.encode(seq(), return_aux_loss=True)[1] is None
    # as in x-transformers, each type keeps its own kwargs: the deterministic ones are not read
    ae = model(
        bottleneck_type="variational", deterministic_bottleneck_kwargs={"activation": nn.Tanh()}
    )
    assert isinstance(ae.bottleneck, VariationalLatentBottleneck)


def test_shared_and_per_stack_flags():
    ae = model(rotary_pos_emb=True, dec_kwargs={"ff_mult": 2})
    assert ae.encoder.pos_emb is None and ae.decoder.pos_emb is None  # rotary on both
    widths = {m.out_features for m in ae.decoder.attn_layers.modules() if isinstance(m, nn.Linear)}
    assert 32 in widths and 64 not in widths  # dec ff_mult=2 of dim 16; encoder keeps 4
    assert 64 in {m.out_features for m in ae.encoder.modules() if isinstance(m, nn.Linear)}


@pytest.mark.parametrize(
    "kw, error, match",
    [
        ({"loss_type": "l3"}, ValueError, "loss_type"),
        ({"bottleneck_type": "vq"}, ValueError, "bottleneck_type"),
        ({"latents_dropout_prob": 1.0}, ValueError, "latents_dropout_prob"),
        ({"bottleneck": "tanh"}, TypeError, "bottleneck"),
        ({"bottleneck": nn.Identity(), "deterministic_bottleneck_kwargs": {"activation": None}},
         ValueError, "custom bottleneck module"),
        ({"bottleneck_type": "variational", "variational_bottleneck_kwargs": {"kl_div_floor": -1}},
         ValueError, "kl_div_floor"),
        ({"rotary_pos_emd": True}, TypeError, "rotary_pos_emb"),
    ],
)  # fmt: skip
def test_bad_construction(kw, error, match):
    with pytest.raises(error, match=match):
        model(**kw)


def test_bad_input():
    ae = model()
    with pytest.raises(ValueError, match="seq"):
        ae(torch.randn(2, 4, DI + 1).double())
    with pytest.raises(ValueError, match="lens"):
        ae(seq(), lens=torch.tensor([7, 1, 1]))
