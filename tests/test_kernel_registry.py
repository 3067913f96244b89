"""The kernel registry: one signature, declared capabilities, refusals that name every flag."""

from __future__ import annotations

import pytest
import torch

from x_attn.attention.features.lsh import LSHHasher, LSHRule
from x_attn.kernels.inputs import AttnInputs
from x_attn.kernels.registry import KERNELS, Need, kernel_named
from x_attn.kernels.select import choose_kernel
from x_attn.masks import CAUSAL, AttnMask, Span


def test_every_kernel_runs_with_one_signature() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64) for _ in range(3))
    lsh = LSHRule(LSHHasher(2).eval(), 2, None)  # the LSH kernels read their rule
    outs = {}
    for kernel in KERNELS:
        rules = (CAUSAL, lsh) if kernel.can("lsh") else (CAUSAL,)
        spec = AttnMask(Span(0, 4), Span(0, 4), rules)
        out, maps = kernel.run(AttnInputs(q, k, v, scale=0.5, spec=spec), None, None)
        assert (maps is not None) == kernel.can("maps"), kernel.name
        outs[kernel.name] = out
    torch.testing.assert_close(outs["sdpa"], outs["manual"], atol=1e-12, rtol=0)
    # linear attention (inputs taken as features): the O(n) scan equals its implied matrix
    torch.testing.assert_close(outs["linear"], outs["linear_maps"], atol=1e-12, rtol=0)
    torch.testing.assert_close(outs["lsh"], outs["lsh_maps"], atol=1e-12, rtol=0)


def test_a_mask_rule_is_served_by_dense_kernels_and_reported() -> None:
    choice = choose_kernel(None, [], needs=[Need("attn_window", "rule:window")])
    assert choice.name == "sdpa" and choice.reason == kernel_named("sdpa").default_reason
    assert choose_kernel(None, ["attn_sparse_topk"]).for_call(True).name == "manual"
    assert choose_kernel(True, []).for_call(True).name == "manual"  # maps ignore attn_flash


def test_impossible_requests_name_every_flag() -> None:
    state = Need("attn_linear", "cache:state")  # the linear kernels form no softmax scores
    with pytest.raises(ValueError, match="attn_linear") as err:
        choose_kernel(None, ["attn_talking_heads"], needs=[state])
    assert "attn_talking_heads" in str(err.value) and "state cache entry" in str(err.value)
    with pytest.raises(ValueError, match="attn_flash=True") as err:
        choose_kernel(True, ["attn_sparse_topk"], needs=[state])
    assert "attn_sparse_topk" in str(err.value) and "attn_linear" in str(err.value)
    latent = Need("attn_latent", "cache:latent")  # no registered kernel reads a latent entry
    with pytest.raises(ValueError, match="attn_flash=False"):
        choose_kernel(False, [], needs=[latent])
    assert choose_kernel(False, [], needs=[state]).name == "linear"  # the non-fused state reader
    with pytest.raises(KeyError, match="sdpa, window, manual, linear"):
        kernel_named("flex")
