"""Issue 7, x-transformers input conventions.

- token ids given as a float tensor of integral values are accepted wherever x-transformers
  accepts them (its token embedding casts with ``.long()``); non-integral values are refused;
- a 3-D ``attn_mask`` is (heads, i, j), and 4-D masks broadcast over batch and heads:
  (b, 1, i, j) and (1, h, i, j) act exactly as the same mask expanded to (b, h, i, j).

Shape legend: b batch, h heads, n / i queries, j keys, v vocabulary.
"""

from __future__ import annotations

import pytest
import torch

from x_attn import (
    AutoregressiveWrapper,
    Decoder,
    Encoder,
    TransformerWrapper,
    XLAutoregressiveWrapper,
)

B, H, N, V = 2, 2, 5, 10


def lm(stack: type = Decoder, **wrapper) -> TransformerWrapper:
    torch.manual_seed(0)
    layers = stack(dim=16, depth=2, heads=H, attn_dim_head=8)
    model = TransformerWrapper(num_tokens=V, max_seq_len=16, attn_layers=layers, **wrapper)
    return model.double().eval()


def ids(b: int = B, n: int = N) -> torch.Tensor:
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(1))


# --- float token ids ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_float_token_ids_of_integral_values_equal_long_ids(dtype):
    model, x = lm(), ids()
    torch.testing.assert_close(model(x.to(dtype)), model(x), atol=0, rtol=0)


def test_generate_accepts_float_prompts():
    ar, x = AutoregressiveWrapper(lm()), ids()
    expected = ar.generate(x, 4, temperature=0.0)
    assert torch.equal(ar.generate(x.float(), 4, temperature=0.0), expected)
    listed = [x[0].double(), x[1, 2:].float()]
    assert torch.equal(
        ar.generate(listed, 4, temperature=0.0), ar.generate([x[0], x[1, 2:]], 4, temperature=0.0)
    )
    xl = XLAutoregressiveWrapper(lm(max_mem_len=4))
    assert torch.equal(
        xl.generate(x.float(), 3, temperature=0.0), xl.generate(x, 3, temperature=0.0)
    )


def test_training_loss_accepts_float_ids():
    ar, x = AutoregressiveWrapper(lm()), ids()
    torch.testing.assert_close(ar(x.float()), ar(x), atol=0, rtol=0)


@pytest.mark.parametrize("bad", [0.5, float("nan"), float("inf")])
def test_non_integral_float_ids_refused(bad):
    x = ids().double()
    x[0, 1] = bad
    with pytest.raises(TypeError, match="'x' must hold integer token ids.*non-integral"):
        lm()(x)
    with pytest.raises(TypeError, match="'prompts' must hold integer token ids.*non-integral"):
        AutoregressiveWrapper(lm()).generate(x, 2)


# --- attn_mask shapes --------------------------------------------------------------------


def random_mask(*shape: int, seed: int = 2) -> torch.Tensor:
    mask = torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) > 0.4
    mask[..., 0] = True  # every row sees at least one key in every head
    return mask


@pytest.mark.parametrize("stack", [Encoder, Decoder])
@pytest.mark.parametrize(
    "shape",
    [(N, N), (H, N, N), (1, N, N), (B, 1, N, N), (1, H, N, N), (1, 1, N, N), (B, H, N, N)],
    ids=str,
)
def test_attn_mask_broadcasts_like_x_transformers(stack, shape):
    """A 3-D mask is (heads, i, j); any mask acts as its expansion to (b, h, i, j)."""
    model, x = lm(stack), ids()
    mask = random_mask(*shape)
    lead = {2: (1, 1), 3: (1,), 4: ()}[len(shape)]
    full = mask.reshape(*lead, *shape).expand(B, H, N, N)
    torch.testing.assert_close(
        model(x, attn_mask=mask), model(x, attn_mask=full), atol=1e-12, rtol=0
    )


def test_three_d_attn_mask_is_per_head_not_per_sample():
    """Head 0 sees only key 0, head 1 sees everything: reading it as (b, i, j) would differ."""
    model, x = lm(Encoder), ids()
    mask = torch.ones(H, N, N, dtype=torch.bool)
    mask[0, :, 1:] = False
    per_head = mask.unsqueeze(0).expand(B, H, N, N)
    per_sample = mask.unsqueeze(1).expand(B, H, N, N)
    out = model(x, attn_mask=mask)
    torch.testing.assert_close(out, model(x, attn_mask=per_head), atol=1e-12, rtol=0)
    assert not torch.allclose(out, model(x, attn_mask=per_sample))


@pytest.mark.parametrize(
    "shape", [(3, N, N), (B, 3, N, N), (3, 1, N, N), (N, N + 1), (1, 1, 1, N, N)]
)
def test_attn_mask_of_wrong_shape_refused(shape):
    with pytest.raises(ValueError, match="'attn_mask' must have shape"):
        lm()(ids(), attn_mask=torch.ones(*shape, dtype=torch.bool))
