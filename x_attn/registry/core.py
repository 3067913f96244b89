"""Registry entries of the basic block options: the manual kernel, the GLU / SiLU feed-forward,
RMSNorm and its eps, projection biases.

See :mod:`x_attn.registry` for what an entry holds and how the tests use it.
"""

from __future__ import annotations

from x_attn.registry.case import FlagCase

CORE: tuple[FlagCase, ...] = (
    FlagCase(
        "attn_flash=False",
        "force the manual softmax kernel",
        "",
        {"attn_flash": False},
        kernel="manual",
    ),
    FlagCase("ff_glu", "GEGLU feed-forward", "2002.05202", {"ff_glu": True}),
    FlagCase("ff_swish", "SiLU feed-forward activation", "", {"ff_swish": True}),
    FlagCase("ff_no_bias", "feed-forward without biases", "", {"ff_no_bias": True}),
    FlagCase("use_rmsnorm", "RMSNorm", "1910.07467", {"use_rmsnorm": True}),
    FlagCase(
        "norm_eps",
        "eps of every norm of the stack (Llama's rms_norm_eps)",
        "",
        {"use_rmsnorm": True, "norm_eps": 1e-6},
    ),
    FlagCase(
        "attn_qkv_bias",
        "biases on the query/key/value projections (GPT-2, Qwen2)",
        "",
        {"attn_qkv_bias": True},
    ),
    FlagCase(
        "attn_out_bias",
        "a bias on the attention output projection (GPT-2)",
        "",
        {"attn_out_bias": True},
    ),
)
