"""The attention flags of x-transformers 2.31 against x-transformers itself, same weights.

Each case builds the x-transformers model, jitters its weights (so zero- or identity-initialised
gates, scales and sinks are active), copies them into the x_attn model with
:func:`x_attn.interop.from_x_transformers`, and compares the logits in float64.
x-transformers runs its fused path where it allows the flag (then 1e-8: it folds the scale into
q); its manual path takes the softmax in float32 (then 1e-6). Skipped when x-transformers is
not installed.

Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

import pytest
import torch

xt = pytest.importorskip("x_transformers")

import x_attn  # noqa: E402
from x_attn.interop import from_x_transformers  # noqa: E402

BASE = dict(dim=16, depth=2, heads=2, attn_dim_head=8)
ROTARY = dict(rotary_pos_emb=True, rotary_emb_dim=4)
CASES = {
    "qk_norm": dict(attn_qk_norm=True, **ROTARY),
    "qk_norm_groups_dim_scale": dict(
        attn_qk_norm=True, attn_qk_norm_groups=2, attn_qk_norm_dim_scale=True, **ROTARY
    ),
    "qk_norm_mem_kv": dict(attn_qk_norm=True, attn_qk_norm_dim_scale=True, attn_num_mem_kv=2),
    "qk_rmsnorm": dict(attn_qk_rmsnorm=True, **ROTARY),
    "k_rmsnorm": dict(attn_k_rmsnorm=True, **ROTARY),
    "value_rmsnorm": dict(attn_value_rmsnorm=True),
    "softclamp_logits": dict(attn_softclamp_logits=True, attn_logit_softclamp_value=1.5),
    "softclamp_output": dict(softclamp_output=True, softclamp_output_value=0.8),
    "add_zero_kv": dict(attn_add_zero_kv=True),
    "head_learned_sink": dict(attn_head_learned_sink=True),
    "gate_value_heads": dict(attn_gate_value_heads=True),
    "head_scale": dict(attn_head_scale=True),
    "gate_values": dict(attn_gate_values=True),
    "gates_low_rank_swiglu": dict(
        attn_gate_values=True,
        attn_gate_values_rank=4,
        attn_output_gate=True,
        attn_output_gate_headwise=True,
        attn_swiglu_values=True,
    ),
    "value_residual_learned": dict(add_value_residual=True, depth=3),
    "value_residual_fixed": dict(
        add_value_residual=True, learned_value_residual_mix=False, depth=3
    ),
}
# flags x-transformers refuses on its fused path: compared with its float32 softmax
NOT_FUSED = {"softclamp_logits", "head_learned_sink", "add_zero_kv"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_equal_x_transformers(name):
    flags = {**BASE, **CASES[name]}
    fused = name not in NOT_FUSED
    torch.manual_seed(0)
    theirs = xt.TransformerWrapper(
        num_tokens=20, max_seq_len=12, attn_layers=xt.Decoder(**flags, attn_flash=fused)
    ).double()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.2 * torch.randn_like(p))
    ours = x_attn.TransformerWrapper(
        num_tokens=20, max_seq_len=12, attn_layers=x_attn.Decoder(**flags)
    ).double()
    from_x_transformers(theirs, ours)
    toks = torch.randint(0, 20, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = theirs.eval()(toks), ours.eval()(toks)
    tol = 1e-8 if fused else 1e-6
    torch.testing.assert_close(got, expected, atol=tol, rtol=0)
    assert (expected - theirs.eval()(toks.flip(-1))).abs().max() > 1e-3  # not a constant
