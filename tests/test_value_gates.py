"""Output gates and scales of the attention heads against their formulas (float64, by hand).

Head scale (NormFormer, arXiv 2110.09456), per-head gates from the query input (arXiv
2306.12929), gated attention output (arXiv 2505.06708: input gate, output gate, per dimension or
per head, full or low rank, sigmoid or SiLU).

Shape legend: b batch, h heads, i queries, d head dim, dm model dim, e = h * d.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from reference import reference_attention
from test_attention_features import HEADS, close, hand_qkv, inputs, make, project_out
from test_qk_norm import jitter_

from x_attn import Decoder


def attended(attn, x):
    """Per-head attention output (b h i d) before any gate, causal."""
    q, k, v = hand_qkv(attn, x)
    return reference_attention(q, k, v, causal=True)


@pytest.mark.parametrize("flash", [None, False])
def test_head_scale_multiplies_each_head(flash):
    attn = make(head_scale=True, causal=True, flash=flash).eval()
    assert torch.equal(attn.head_scale.scale, torch.ones(1, HEADS, 1, 1, dtype=torch.float64))
    jitter_(attn, ("head_scale",))
    x = inputs()
    expected = attended(attn, x) * attn.head_scale.scale.view(1, HEADS, 1, 1)
    close(attn(x), project_out(attn, expected))


@pytest.mark.parametrize("flash", [None, False])
def test_gate_value_heads_are_sigmoid_gates_from_the_query_input(flash):
    attn = make(gate_value_heads=True, causal=True, flash=flash).eval()
    gates = attn.gate_value_heads.to_gates
    assert torch.equal(gates.weight, torch.zeros_like(gates.weight))
    assert torch.equal(gates.bias, torch.full_like(gates.bias, 10.0))  # open at start
    jitter_(attn, ("gate_value_heads",))
    x = inputs()
    g = torch.sigmoid(x @ gates.weight.T + gates.bias)  # (b i h)
    expected = attended(attn, x) * rearrange(g, "b i h -> b h i 1")
    close(attn(x), project_out(attn, expected))


def by_hand_gate(proj, t):
    if proj.down is None:
        return t @ proj.up.weight.T
    hidden = t @ proj.down.weight.T
    return (F.silu(hidden) if proj.silu else hidden) @ proj.up.weight.T


def to_heads(g, headwise):
    if headwise:
        return rearrange(g, "b i h -> b h i 1")
    return rearrange(g, "b i (h d) -> b h i d", h=HEADS)


GATES = [
    dict(gate_values=True),
    dict(gate_values=True, gate_values_headwise=True, swiglu_values=True),
    dict(gate_values=True, gate_values_rank=4),
    dict(gate_values=True, gate_values_rank=4, low_rank_silu_gates=False),
    dict(output_gate=True),
    dict(output_gate=True, output_gate_rank=3, swiglu_values=True),
    dict(gate_values=True, gate_values_rank=4, output_gate=True, output_gate_headwise=True),
]


@pytest.mark.parametrize("flash", [None, False])
@pytest.mark.parametrize("flags", GATES, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_gated_values_follow_the_formula(flags, flash):
    attn = make(causal=True, flash=flash, **flags).eval()
    gate = attn.gate_values
    for proj in (gate.input_gate, gate.output_gate):
        if proj is not None:
            assert torch.equal(proj.up.weight, torch.zeros_like(proj.up.weight))
    jitter_(attn, ("gate_values",))
    x = inputs()
    out = attended(attn, x)
    logits = 0.0
    if gate.input_gate is not None:
        logits = to_heads(by_hand_gate(gate.input_gate, x), flags.get("gate_values_headwise"))
    if gate.output_gate is not None:
        merged = rearrange(out, "b h i d -> b i (h d)")
        headwise = flags.get("output_gate_headwise")
        logits = logits + to_heads(by_hand_gate(gate.output_gate, merged), headwise)
    act = F.silu(logits) if flags.get("swiglu_values") else torch.sigmoid(logits)
    close(attn(x), project_out(attn, out * act))
    assert attn.explain().startswith("manual" if flash is False else "sdpa")


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (dict(attn_gate_values_rank=4), "has no effect without 'attn_gate_values'"),
        (dict(attn_output_gate_headwise=True), "has no effect without 'attn_output_gate'"),
        (dict(attn_swiglu_values=True), "without 'attn_gate_values' or 'attn_output_gate'"),
        (dict(attn_gate_values=True, attn_low_rank_silu_gates=False), "has no effect"),
        (
            dict(attn_gate_values=True, attn_gate_values_rank=2, attn_gate_values_headwise=True),
            "choose one",
        ),
        (dict(attn_gate_values=True, attn_gate_values_rank=0), "attn_gate_values_rank"),
        (dict(attn_output_gate=True, attn_output_gate_rank=64), "must be below"),
    ],
)
def test_gate_refusals(flags, match):
    with pytest.raises(ValueError, match=match):
        Decoder(dim=16, depth=1, heads=2, attn_dim_head=8, **flags)
