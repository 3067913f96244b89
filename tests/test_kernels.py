"""The SDPA and manual kernels against the naive float64 reference (tests/reference.py).

Values and gradients (q, k, v and a bias that requires grad) must agree to 1e-10 in float64
for every masking situation the library produces, including bottom-right causal masks with
fewer queries than keys and query rows that see no key at all.

Shape legend: b batch, h query heads, hk key/value heads, i queries, j keys, dh q/k head dim,
dv value head dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from reference import reference_attention
from torch import Tensor

from x_attn.kernels.inputs import AttnInputs
from x_attn.kernels.manual import manual_attention
from x_attn.kernels.sdpa import sdpa_attention
from x_attn.kernels.select import choose_kernel

ATOL = 1e-10
B, H, DH = 2, 3, 8


@dataclass
class Case:
    """One kernel call: shapes plus the optional mask / bias / causal flag."""

    i: int = 5
    j: int = 5
    hk: int = H
    vk: int = H
    dv: int = DH
    mask: Tensor | None = None
    bias_shape: tuple[int, ...] | None = None
    causal: bool = False
    extra: dict = field(default_factory=dict)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bool(shape: tuple[int, ...], seed: int, p: float = 0.6) -> Tensor:
    return torch.rand(*shape, generator=_gen(seed)) < p


def _key_padding() -> Tensor:
    mask = torch.ones(B, 1, 1, 6, dtype=torch.bool)
    mask[0, ..., 4:] = False
    mask[1, ..., :2] = False
    return mask


def _dead_rows_mask() -> Tensor:
    """(b, h, i, j) user mask where some query rows allow no key at all."""
    mask = _bool((B, H, 4, 6), seed=3)
    mask[0, :, 1] = False  # every head of query 1 in sample 0 sees nothing
    mask[1, 2, 3] = False  # one head of one query
    mask[1, 0, 0] = True
    return mask


def _all_masked_sample() -> Tensor:
    mask = torch.ones(B, 1, 1, 5, dtype=torch.bool)
    mask[1] = False  # sample 1 has no visible key
    return mask


CASES: dict[str, Case] = {
    "no_mask": Case(),
    "causal_square": Case(causal=True),
    "causal_fewer_queries": Case(i=3, j=7, causal=True),
    "causal_more_queries_dead_rows": Case(i=6, j=4, causal=True),
    "key_padding": Case(i=4, j=6, mask=_key_padding()),
    "key_padding_causal": Case(i=6, j=6, mask=_key_padding(), causal=True),
    "user_mask_2d": Case(i=4, j=6, mask=_bool((4, 6), seed=1, p=0.8)),
    "user_mask_4d": Case(i=4, j=6, mask=_bool((B, H, 4, 6), seed=2, p=0.8)),
    "bias": Case(i=4, j=6, bias_shape=(H, 4, 6)),
    "bias_batch": Case(i=4, j=6, bias_shape=(B, H, 4, 6)),
    "bias_and_mask": Case(i=4, j=6, mask=_key_padding(), bias_shape=(H, 4, 6)),
    "bias_causal": Case(i=3, j=6, bias_shape=(1, H, 3, 6), causal=True),
    "collab_k_one_head": Case(i=4, j=6, hk=1, mask=_key_padding()),
    "mqa_kv_one_head": Case(i=4, j=6, hk=1, vk=1, causal=True),
    "value_dim_differs": Case(i=4, j=6, dv=5, mask=_key_padding()),
    "dead_rows": Case(i=4, j=6, mask=_dead_rows_mask()),
    "dead_rows_bias": Case(i=4, j=6, mask=_dead_rows_mask(), bias_shape=(H, 4, 6)),
    "dead_sample": Case(i=3, j=5, mask=_all_masked_sample(), causal=True),
    "dead_sample_bias": Case(i=3, j=5, mask=_all_masked_sample(), bias_shape=(H, 3, 5)),
}


def _leaves(case: Case, seed: int = 0) -> dict[str, Tensor]:
    """Fresh float64 leaf tensors requiring grad (q, k, v and the bias if any)."""
    g = _gen(seed)
    out = {
        "q": torch.randn(B, H, case.i, DH, generator=g, dtype=torch.float64),
        "k": torch.randn(B, case.hk, case.j, DH, generator=g, dtype=torch.float64),
        "v": torch.randn(B, case.vk, case.j, case.dv, generator=g, dtype=torch.float64),
    }
    if case.bias_shape is not None:
        out["bias"] = torch.randn(*case.bias_shape, generator=g, dtype=torch.float64)
    return {name: t.requires_grad_() for name, t in out.items()}


def _run(kind: str, case: Case, scale: float = 0.37) -> tuple[Tensor, dict[str, Tensor]]:
    """Output and gradients of a fixed random cotangent for one implementation."""
    leaves = _leaves(case)
    q, k, v, bias = leaves["q"], leaves["k"], leaves["v"], leaves.get("bias")
    if kind == "reference":
        if case.hk != case.vk:  # the reference wants k and v on the same heads: repeat here
            k, v = k.expand(-1, H, -1, -1), v.expand(-1, H, -1, -1)
        out = reference_attention(
            q, k, v, mask=case.mask, bias=bias, causal=case.causal, scale=scale
        )
    else:
        inputs = AttnInputs(q, k, v, mask=case.mask, bias=bias, causal=case.causal, scale=scale)
        out = sdpa_attention(inputs) if kind == "sdpa" else manual_attention(inputs)[0]
    cotangent = torch.randn(out.shape, generator=_gen(99), dtype=torch.float64)
    (out * cotangent).sum().backward()
    return out.detach(), {name: t.grad for name, t in leaves.items()}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("kind", ["sdpa", "manual"])
def test_kernel_matches_reference(kind: str, name: str) -> None:
    case = CASES[name]
    out, grads = _run(kind, case)
    ref_out, ref_grads = _run("reference", case)
    assert out.shape == (B, H, case.i, case.dv)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref_out, atol=ATOL, rtol=0)
    assert set(grads) == set(ref_grads)
    for leaf, grad in grads.items():
        assert grad is not None and torch.isfinite(grad).all(), leaf
        torch.testing.assert_close(grad, ref_grads[leaf], atol=ATOL, rtol=0, msg=leaf)


@pytest.mark.parametrize("name", list(CASES))
def test_sdpa_matches_manual(name: str) -> None:
    out_s, grads_s = _run("sdpa", CASES[name])
    out_m, grads_m = _run("manual", CASES[name])
    torch.testing.assert_close(out_s, out_m, atol=ATOL, rtol=0)
    for leaf in grads_m:
        torch.testing.assert_close(grads_s[leaf], grads_m[leaf], atol=ATOL, rtol=0, msg=leaf)


@pytest.mark.parametrize("name", ["dead_rows", "dead_rows_bias", "dead_sample", "dead_sample_bias"])
@pytest.mark.parametrize("kind", ["sdpa", "manual"])
def test_fully_masked_rows_are_zero(kind: str, name: str) -> None:
    case = CASES[name]
    out, grads = _run(kind, case)
    allowed = torch.ones(B, H, case.i, case.j, dtype=torch.bool) & case.mask
    if case.causal:
        allowed = allowed & torch.ones(case.i, case.j, dtype=torch.bool).tril(case.j - case.i)
    dead = ~allowed.any(dim=-1)  # (b, h, i)
    assert dead.any(), "the case must contain a fully masked row"
    assert (out[dead] == 0).all()
    assert (out[~dead].abs().sum(-1) > 0).all()
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert (grads["q"][dead] == 0).all()  # a dead row's query influences nothing


@pytest.mark.parametrize("kind", ["sdpa", "manual"])
def test_single_query_decode_sees_every_key(kind: str) -> None:
    """Regression: SDPA's is_causal is top-left aligned; a decode step (i=1) must see all keys."""
    causal = Case(i=1, j=7, causal=True)
    out, _ = _run(kind, causal)
    full, _ = _run("reference", Case(i=1, j=7))
    torch.testing.assert_close(out, full, atol=ATOL, rtol=0)
    first_key_only, _ = _run("reference", Case(i=1, j=7, mask=torch.eye(1, 7, dtype=torch.bool)))
    assert (out - first_key_only).abs().max() > 1e-3  # top-left alignment would give this


def test_choose_kernel_defaults_to_sdpa() -> None:
    assert choose_kernel(None, []).name == "sdpa"
    assert choose_kernel(True, []).name == "sdpa"


def test_choose_kernel_manual_when_scores_needed_or_forced() -> None:
    choice = choose_kernel(None, ["attn_talking_heads"])
    assert choice.name == "manual" and "attn_talking_heads" in choice.reason
    forced = choose_kernel(False, [])
    assert forced.name == "manual" and "attn_flash=False" in forced.reason


def test_choose_kernel_flash_true_with_score_feature_raises() -> None:
    with pytest.raises(ValueError, match="attn_flash=True") as err:
        choose_kernel(True, ["attn_sparse_topk", "attn_use_entmax15"], owner="Attention")
    assert "attn_sparse_topk" in str(err.value) and "attn_use_entmax15" in str(err.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["bias_and_mask", "bias_causal", "dead_rows_bias"])
@pytest.mark.parametrize("kind", ["sdpa", "manual"])
def test_low_precision_masks_hold_against_large_scores(kind: str, name: str, dtype) -> None:
    """Scores far past half of float16's maximum (where a finite stand-in for -inf sits) with a
    bias and a mask: masked keys stay out, in float16 and bfloat16, as the float64 reference
    computes from the same rounded inputs; fully masked rows give zeros."""
    case = CASES[name]
    leaves = {n: t.detach() for n, t in _leaves(case).items()}
    q, k = (200 * leaves["q"]).to(dtype), (200 * leaves["k"]).to(dtype)  # scores ~ 1e4..1e5
    v, bias = leaves["v"].to(dtype), leaves["bias"].to(dtype)
    inputs = AttnInputs(q, k, v, mask=case.mask, bias=bias, causal=case.causal, scale=0.37)
    out = sdpa_attention(inputs) if kind == "sdpa" else manual_attention(inputs)[0]
    low = [t.double() for t in (q, k, v, bias)]
    ref = reference_attention(*low[:3], mask=case.mask, bias=low[3], causal=case.causal, scale=0.37)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=0)
