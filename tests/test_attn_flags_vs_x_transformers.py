"""The attention flags of x-transformers 2.31 against x-transformers itself, same weights.

Each case builds the x-transformers model, jitters its weights (so zero- or identity-initialised
gates, scales and sinks are active), copies them into the x_attn model through the name map
below, and compares the logits in float64. x-transformers runs its fused path where it allows
the flag (then 1e-8: it folds the scale into q); its manual path takes the softmax in float32
(then 1e-6). Skipped when x-transformers is not installed.

Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

xt = pytest.importorskip("x_transformers")

import x_attn  # noqa: E402

# x-transformers name (inside one layer) -> x_attn name (inside that layer)
LAYER_RENAMES = [
    (r"^0\.0\.gamma$", "norm.weight"),
    (r"^1\.(to_[qkv])\.weight$", r"block.proj.\1.weight"),
    (r"^1\.to_out\.weight$", "block.to_out.weight"),
    (r"^1\.ff\.0\.0\.", "block.proj_in."),
    (r"^1\.ff\.2\.", "block.proj_out."),
    (r"^1\.qk_norm_([qk])_scale$", r"block.qk_norm.\1_scale"),
    (r"^1\.([qk])_rmsnorm\.gamma$", r"block.qk_rmsnorm.\1_norm.gamma"),
    (r"^1\.value_rmsnorm\.gamma$", "block.value_rmsnorm.norm.gamma"),
    (r"^1\.attend\.head_attn_sink$", "block.head_learned_sink.sink"),
    (r"^1\.head_scale_params$", "block.head_scale.scale"),
    (r"^1\.to_v_head_gate\.", "block.gate_value_heads.to_gates."),
    (r"^1\.to_v_gate\.weight$", "block.gate_values.input_gate.up.weight"),
    (r"^1\.to_v_gate\.(down|up)\.", r"block.gate_values.input_gate.\1."),
    (r"^1\.to_output_gate\.weight$", "block.gate_values.output_gate.up.weight"),
    (r"^1\.to_output_gate\.(down|up)\.", r"block.gate_values.output_gate.\1."),
    (r"^1\.to_value_residual_mix\.0\.", "block.value_residual.to_mix."),
    (r"^1\.mem_([kv])$", r"block.memory_kv.mem_\1"),
]


def x_attn_name(key: str) -> str:
    if key.startswith("token_emb.emb."):
        return "token_emb." + key[len("token_emb.emb.") :]
    if key == "attn_layers.final_norm.gamma":
        return "attn_layers.final_norm.weight"
    found = re.match(r"^attn_layers\.layers\.(\d+)\.(.*)$", key)
    if found is None:
        return key
    inner = found.group(2)
    for pattern, target in LAYER_RENAMES:
        inner = re.sub(pattern, target, inner)
    return f"attn_layers.layers.{found.group(1)}.{inner}"


def rotary_order(dim_head: int, rotary_dim: int) -> torch.Tensor:
    """x_attn's query/key dim j holds x-transformers' dim order[j]: x-transformers rotates
    interleaved pairs (2i, 2i + 1), x_attn half-split pairs (i, i + r/2)."""
    half = rotary_dim // 2
    order = list(range(dim_head))
    for i in range(half):
        order[i], order[i + half] = 2 * i, 2 * i + 1
    return torch.tensor(order)


def _reorder_qk(name: str, value: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """Query/key rows and per-dim query/key parameters in x_attn's rotary layout."""
    if order is None:
        return value
    if re.search(r"proj\.to_[qk]\.weight$", name):
        return value.unflatten(0, (-1, len(order)))[:, order].flatten(0, 1)
    if re.search(r"(qk_norm\.[qk]_scale|qk_rmsnorm\.[qk]_norm\.gamma|memory_kv\.mem_k)$", name):
        return value[..., order]
    return value


def copy_weights(ours: nn.Module, theirs: nn.Module, order: torch.Tensor | None = None) -> None:
    """x-transformers -> x_attn: stack norms store gain - 1, learned positions a dim ** -0.5
    factor; x_attn's extra biases (norms, logits) are set to 0; rotary frequencies are not
    weights in x_attn (computed in float64 from the base); ``order`` (see
    :func:`rotary_order`) reorders query/key dims when rotary is on."""
    target, mapped = ours.state_dict(), {}
    for key, value in theirs.state_dict().items():
        if key.endswith("rotary_pos_emb.inv_freq"):
            continue
        name = x_attn_name(key)
        assert name in target, f"no x_attn weight for {key} (tried {name})"
        value = _reorder_qk(name, value, order)
        if name.endswith("norm.weight"):
            value = value + 1.0
        if name == "pos_emb.emb.weight":
            value = value * theirs.pos_emb.scale
        mapped[name] = value
    for name, value in target.items():
        if name not in mapped:
            assert name.endswith("bias"), f"x-transformers has no weight for {name}"
            mapped[name] = torch.zeros_like(value)
    ours.load_state_dict(mapped)


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
    rotary = flags.get("rotary_emb_dim")
    copy_weights(ours, theirs, None if rotary is None else rotary_order(8, rotary))
    toks = torch.randint(0, 20, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = theirs.eval()(toks), ours.eval()(toks)
    tol = 1e-8 if fused else 1e-6
    torch.testing.assert_close(got, expected, atol=tol, rtol=0)
    assert (expected - theirs.eval()(toks.flip(-1))).abs().max() > 1e-3  # not a constant
