"""orthog_residual (arXiv 2505.11881) and mv_split_residual (arXiv 2605.06169).

The rules are checked against their formulas written naively here (loops over tokens, float64),
the stack against its invariants (orthogonality, causality, padding), and mv_split_residual in
a non-causal stack against x-transformers on copied weights (skipped without it).

Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

import pytest
import torch
from xt_pairs import xt_pair

from x_attn import Decoder, Encoder, TransformerWrapper
from x_attn.layers.mv_split import MVSplitResidual
from x_attn.layers.orthog_residual import OrthogonalResidual

D = 8


def naive_orthogonal(f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    for b in range(x.shape[0]):
        for i in range(x.shape[1]):
            xi, fi = x[b, i], f[b, i]
            out[b, i] = xi + fi - (fi @ xi) / (xi @ xi + 1e-6) * xi
    return out


def naive_mv_split(f, x, alpha, beta, mask, causal):
    """alpha, beta: (d,) or callables of mean(f)."""
    out = x.clone()
    for b in range(x.shape[0]):
        for i in range(x.shape[1]):
            rows = [t for t in range(x.shape[1]) if (mask is None or mask[b, t])]
            if causal:
                rows = [t for t in rows if t <= i]
            mf = f[b, rows].mean(0) if rows else torch.zeros(D, dtype=f.dtype)
            mx = x[b, rows].mean(0) if rows else torch.zeros(D, dtype=f.dtype)
            a = alpha(mf) if callable(alpha) else alpha
            g = beta(mf) if callable(beta) else beta
            out[b, i] = x[b, i] + g * (f[b, i] - mf) + a * (mf - mx)
    return out


def test_orthogonal_rule_equals_its_formula_and_is_orthogonal():
    torch.manual_seed(0)
    f, x = torch.randn(2, 5, D, dtype=torch.float64), torch.randn(2, 5, D, dtype=torch.float64)
    out = OrthogonalResidual(D)(f, x)
    torch.testing.assert_close(out, naive_orthogonal(f, x), rtol=1e-12, atol=1e-12)
    dots = ((out - x) * x).sum(-1)
    assert dots.abs().max() < 1e-5  # the update is orthogonal to the stream (up to eps)
    assert OrthogonalResidual(D)(f, torch.zeros_like(x)).eq(f).all()  # no stream: all of f


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("learned", [False, True])
def test_mv_split_rule_equals_its_formula(causal, learned):
    torch.manual_seed(0)
    rule = MVSplitResidual(D, learned=learned).double()
    for p in rule.parameters():
        torch.nn.init.normal_(p)
    f, x = torch.randn(2, 5, D, dtype=torch.float64), torch.randn(2, 5, D, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True, False], [False, True, True, True, True]])
    if learned:
        alpha, beta = rule.to_alpha, rule.to_beta
    else:
        alpha, beta = rule.alpha, rule.beta
    expected = naive_mv_split(f, x, alpha, beta, mask, causal)
    out = rule(f, x, mask, causal)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_mv_split_starts_at_its_initial_gains():
    rule = MVSplitResidual(D, init_alpha=0.25, init_beta=0.5, learned=True)
    mean = torch.randn(3, D)
    assert torch.equal(rule.to_alpha(mean), torch.full((3, D), 0.25))
    assert torch.equal(rule.to_beta(mean), torch.full((3, D), 0.5))


@pytest.mark.parametrize("flags", [{"orthog_residual": True}, {"mv_split_residual": True}])
def test_decoder_stays_causal_and_padding_free(flags):
    torch.manual_seed(0)
    dec = Decoder(dim=D, depth=2, heads=2, attn_dim_head=4, **flags).double().eval()
    x = torch.randn(2, 6, D, dtype=torch.float64)
    changed = x.clone()
    changed[:, 4:] = torch.randn(2, 2, D, dtype=torch.float64)
    torch.testing.assert_close(dec(x)[:, :4], dec(changed)[:, :4], rtol=0, atol=1e-12)
    # a right-padded row gives the real rows what the unpadded row gives
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 3:] = False
    torch.testing.assert_close(dec(x, mask=mask)[0, :3], dec(x[:1, :3])[0], rtol=0, atol=1e-12)


def test_mv_split_encoder_ignores_padded_tokens():
    torch.manual_seed(0)
    enc = Encoder(dim=D, depth=2, heads=2, attn_dim_head=4, mv_split_residual=True).double()
    for p in enc.parameters():
        p.data.add_(0.3 * torch.randn_like(p))
    x = torch.randn(1, 6, D, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, True, False, False]])
    other = x.clone()
    other[:, 4:] = 5.0
    torch.testing.assert_close(enc(x, mask=mask)[:, :4], enc(x[:, :4]), rtol=0, atol=1e-12)
    torch.testing.assert_close(enc(other, mask=mask)[:, :4], enc(x[:, :4]), rtol=0, atol=1e-12)


def test_mv_split_decodes_without_a_cache_and_refuses_mems():
    model = TransformerWrapper(
        num_tokens=10, max_seq_len=16, attn_layers=Decoder(dim=D, depth=1, mv_split_residual=True)
    )
    assert "token means" in model.attn_layers.uncacheable_reason
    with pytest.raises(ValueError, match="mv_split_residual"):
        TransformerWrapper(
            num_tokens=10,
            max_seq_len=16,
            max_mem_len=4,
            attn_layers=Decoder(dim=D, depth=1, mv_split_residual=True),
        )


def test_refusals_name_the_clash():
    with pytest.raises(ValueError, match="orthog_residual and mv_split_residual"):
        Decoder(dim=D, depth=1, orthog_residual=True, mv_split_residual=True)
    with pytest.raises(ValueError, match="gate_residual"):
        Decoder(dim=D, depth=1, orthog_residual=True, gate_residual=True)
    with pytest.raises(ValueError, match="residual_fn_kwargs.*mv_split_residual=True"):
        Decoder(dim=D, depth=1, residual_fn_kwargs={"learned": True})
    with pytest.raises(ValueError, match="did_you"):
        Decoder(dim=D, depth=1, mv_split_residual=True, residual_fn_kwargs={"did_you": 1})
    with pytest.raises(TypeError, match="learned"):
        Decoder(dim=D, depth=1, mv_split_residual=True, residual_fn_kwargs={"learned": 1})
    with pytest.raises(ValueError, match="reversible"):
        Decoder(dim=D, depth=1, reversible=True, orthog_residual=True)


@pytest.mark.parametrize("learned", [False, True])
def test_mv_split_encoder_equals_x_transformers(learned):
    flags = dict(dim=16, depth=2, heads=2, attn_dim_head=8, attn_flash=True)
    flags.update(mv_split_residual=True, residual_fn_kwargs={"learned": learned})

    def build(lib):
        return lib.TransformerWrapper(
            num_tokens=20, max_seq_len=16, attn_layers=lib.Encoder(**flags)
        )

    theirs, ours = xt_pair(build)
    tokens = torch.randint(0, 20, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 6:] = False
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), theirs(tokens), atol=1e-9, rtol=0)
        expected, got = theirs(tokens, mask=mask), ours(tokens, mask=mask)
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-9, rtol=0)


def test_interop_refuses_the_rules_computed_differently():
    pytest.importorskip("x_transformers")
    import x_attn
    from x_attn.interop import from_x_transformers

    for flags in ({"orthog_residual": True}, {"mv_split_residual": True}):
        model = x_attn.TransformerWrapper(
            num_tokens=20, max_seq_len=16, attn_layers=x_attn.Decoder(dim=16, depth=1, **flags)
        )
        with pytest.raises(ValueError, match=next(iter(flags))):
            from_x_transformers(model.state_dict(), model)
