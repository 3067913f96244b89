"""attn_qkv_bias, attn_out_bias and norm_eps against their formulas (float64, 1e-12).

* ``attn_qkv_bias`` / ``attn_out_bias``: a layer equals ``(softmax(q k^T / sqrt(d)) v) W_o^T
  + b_o`` with ``q = x W_q^T + b_q`` (likewise k, v) computed by the naive reference
  (tests/reference.py), with grouped key/value heads;
* ``norm_eps``: every norm of the stack (final one included) computes
  ``x * rsqrt(mean(x^2) + eps) * g`` (RMSNorm) or LayerNorm with that eps;
* the options are refused where they would do nothing.

Shape legend: b batch, n sequence, d model dim, h heads, hk key/value heads, dh head dim.
"""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from reference import reference_attention

from x_attn import Decoder


def test_qkv_and_out_biases_match_the_formula():
    torch.manual_seed(0)
    stack = Decoder(
        dim=12,
        depth=1,
        heads=4,
        attn_kv_heads=2,
        attn_dim_head=3,
        attn_qkv_bias=True,
        attn_out_bias=True,
    ).double()
    attn = stack.layers[0].block
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_()
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    split = "b n (h d) -> b h n d"
    q = rearrange(x @ attn.proj.to_q.weight.T + attn.proj.to_q.bias, split, h=4)
    k = rearrange(x @ attn.proj.to_k.weight.T + attn.proj.to_k.bias, split, h=2)
    v = rearrange(x @ attn.proj.to_v.weight.T + attn.proj.to_v.bias, split, h=2)
    assert attn.proj.to_q.bias is not None and attn.to_out.bias is not None
    out = rearrange(reference_attention(q, k, v, causal=True), "b h n d -> b n (h d)")
    expected = out @ attn.to_out.weight.T + attn.to_out.bias
    torch.testing.assert_close(attn(x), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_norm_eps_reaches_every_norm(norm):
    torch.manual_seed(0)
    flags = {"use_rmsnorm": True} if norm == "rmsnorm" else {}
    stack = Decoder(dim=8, depth=1, heads=2, norm_eps=0.5, **flags).double()
    norms = [layer.norm for layer in stack.layers] + [stack.final_norm]
    x = 0.3 * torch.randn(3, 8, dtype=torch.float64)  # eps = 0.5 dominates mean(x^2)
    for module in norms:
        with torch.no_grad():
            module.weight.normal_() if norm == "layernorm" else module.g.normal_()
        if norm == "rmsnorm":
            expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 0.5) * module.g
        else:
            centred = x - x.mean(-1, keepdim=True)
            scale = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + 0.5)
            expected = centred * scale * module.weight + module.bias
        torch.testing.assert_close(module(x), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"norm_eps": 1e-6, "use_rezero": True}, "norm_eps"),
        ({"norm_eps": 1e-6, "use_dynamic_tanh": True}, "norm_eps"),
        ({"norm_eps": -1.0}, "norm_eps"),
        ({"attn_qkv_bias": True, "attn_collab_heads": True}, "attn_qkv_bias"),
        ({"attn_out_bias": True, "attn_on_attn": True}, "attn_out_bias"),
    ],
)
def test_options_that_would_do_nothing_are_refused(flags, named):
    with pytest.raises(ValueError, match=named):
        Decoder(dim=8, depth=1, heads=2, **flags)
