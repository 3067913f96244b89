"""Issue 7 item 12: masked positions of ContinuousTransformerWrapper have no effect at all.

Whatever sits in a masked position (NaN, inf, a huge value) must leave every output finite and
the real positions' outputs and gradients unchanged.

Shape legend: b batch, n sequence, di input dim.
"""

from __future__ import annotations

import pytest
import torch

from x_attn import ContinuousTransformerWrapper, Decoder, Encoder

B, N, DI = 2, 6, 5


def build(stack: type, **flags) -> ContinuousTransformerWrapper:
    torch.manual_seed(0)
    layers = stack(dim=16, depth=2, heads=2, attn_dim_head=8, **flags)
    model = ContinuousTransformerWrapper(max_seq_len=8, dim_in=DI, dim_out=3, attn_layers=layers)
    return model.double().eval()


def padded() -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[0, 4:] = False  # right padding
    mask[1, :2] = False  # left padding
    x = torch.randn(B, N, DI, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return x.masked_fill(~mask.unsqueeze(-1), 0.0), mask


@pytest.mark.parametrize("fill", [float("nan"), float("inf"), -float("inf"), 1e300])
@pytest.mark.parametrize("flags", [{}, {"attn_flash": False}, {"rotary_pos_emb": True}])
@pytest.mark.parametrize("stack", [Encoder, Decoder])
def test_masked_positions_have_no_effect(stack, flags, fill):
    model = build(stack, **flags)
    clean, mask = padded()
    dirty = clean.masked_fill(~mask.unsqueeze(-1), fill)
    outs, grads, params = [], [], []
    for x in (clean, dirty):
        x = x.clone().requires_grad_()
        model.zero_grad()
        out = model(x, mask=mask)
        out[mask].sum().backward()
        outs.append(out)
        grads.append(x.grad)
        params.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.isfinite(outs[1]).all()
    torch.testing.assert_close(outs[1][mask], outs[0][mask], atol=1e-12, rtol=0)
    assert torch.isfinite(grads[1]).all()
    torch.testing.assert_close(grads[1], grads[0], atol=1e-12, rtol=0)
    assert (grads[1][~mask] == 0).all()
    torch.testing.assert_close(params[1], params[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("fill", [float("nan"), float("inf")])
def test_masked_prepended_embeddings_have_no_effect(fill):
    """A position ``prepend_mask`` marks False is padding too: what it holds does not matter."""
    model = build(Encoder)
    clean, mask = padded()
    pre_mask = torch.tensor([[True, False, True], [False, True, True]])
    pre = torch.randn(B, 3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    pre = pre.masked_fill(~pre_mask.unsqueeze(-1), 0.0)
    outs, grads = [], []
    for p in (pre, pre.masked_fill(~pre_mask.unsqueeze(-1), fill)):
        p = p.clone().requires_grad_()
        out = model(clean, mask=mask, prepend_embeds=p, prepend_mask=pre_mask)
        real = torch.cat((pre_mask, mask), dim=1)
        out[real].sum().backward()
        outs.append(out[real])
        grads.append(p.grad)
    assert torch.isfinite(outs[1]).all()
    torch.testing.assert_close(outs[1], outs[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-12, rtol=0)
