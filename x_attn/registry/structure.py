"""Registry entries of the stack's structure: norms, residual rules, layer order, depth
tricks (reversible, stochastic depth, checkpointing, weight tying, schedules).

See :mod:`x_attn.registry` for what an entry holds and how the tests use it.
"""

from __future__ import annotations

from x_attn.registry.case import FlagCase

STRUCTURE: tuple[FlagCase, ...] = (
    FlagCase("use_scalenorm", "ScaleNorm", "1910.05895", {"use_scalenorm": True}),
    FlagCase(
        "use_rezero",
        "no norm, branch x learned scalar initialised at 0",
        "2003.04887",
        {"use_rezero": True},
    ),
    FlagCase(
        "pre_norm=False", "post-norm (original Transformer)", "1706.03762", {"pre_norm": False}
    ),
    FlagCase(
        "residual_attn",
        "add previous layer's attention logits",
        "2012.11747",
        {"residual_attn": True},
        needs_scores=True,
        kernel="manual",
    ),
    FlagCase(
        "gate_residual", "GRU-gated residual connections", "1910.06764", {"gate_residual": True}
    ),
    FlagCase(
        "add_value_residual",
        "later layers mix the first layer's values into theirs (learned mix per token)",
        "2410.17897",
        {"add_value_residual": True},
    ),
    FlagCase(
        "macaron",
        "feed-forward, attention, feed-forward (half-step ffs)",
        "1906.02762",
        {"macaron": True},
    ),
    FlagCase(
        "sandwich_coef",
        "attention layers first, feed-forwards last",
        "1911.03864",
        {"sandwich_coef": 1},
    ),
    FlagCase(
        "reversible",
        "reversible residual stack, activations recomputed",
        "2001.04451",
        {"reversible": True},
        cacheable=False,
        mems_ok=False,
        compiles=False,
        compile_reason="its autograd.Function saves the RNG state (torch.get_rng_state) to "
        "replay dropout when it recomputes the blocks in backward; dynamo skips that function",
    ),
    FlagCase(
        "layer_dropout",
        "stochastic depth: training skips each layer with this probability",
        "1603.09382",
        {"layer_dropout": 0.5},
        stochastic=True,
        compiles=False,
        compile_reason="whether a layer runs is a Python branch on a random draw per call",
    ),
    FlagCase(
        "checkpoint_layers",
        "activation checkpointing: chosen layers recompute their activations in backward",
        "1604.06174",
        {"checkpoint_layers": (True, False, False, True)},
    ),
    FlagCase(
        "use_layerscale",
        "branch outputs times a learned per-feature vector",
        "2103.17239",
        {"use_layerscale": True, "layerscale_init_value": 0.1},
    ),
    FlagCase(
        "scale_residual",
        "residual stream times a learned per-feature vector",
        "",
        {"scale_residual": True, "scale_residual_constant": 0.9},
    ),
    FlagCase(
        "sandwich_norm", "a norm after every branch as well", "2105.13290", {"sandwich_norm": True}
    ),
    FlagCase(
        "pre_and_post_norm",
        "pre-norm and a norm after every residual addition",
        "2002.04745",
        {"pre_and_post_norm": True},
    ),
    FlagCase(
        "pre_norm_has_final_norm=False",
        "pre-norm stack without the final norm",
        "",
        {"pre_norm_has_final_norm": False},
    ),
    FlagCase(
        "resi_dual",
        "post-norm stream plus a normed pre-norm stream (ResiDual)",
        "2304.14802",
        {"resi_dual": True, "resi_dual_scale": 0.5},
    ),
    FlagCase(
        "unet_skips",
        "U-Net long skips: mirrored blocks start from a linear map of both streams",
        "2209.12152",
        {"unet_skips": True},
    ),
    FlagCase(
        "orthog_residual",
        "only the part of a branch output orthogonal to the stream joins it (per token)",
        "2505.11881",
        {"orthog_residual": True},
    ),
    FlagCase(
        "mv_split_residual",
        "mean-variance split residual: gained centred update, leaky token-mean replacement",
        "2605.06169",
        {"mv_split_residual": True, "residual_fn_kwargs": {"learned": True}},
        cacheable=False,
        mems_ok=False,
    ),
    FlagCase(
        "reinject_input",
        "every block reads the stream plus a gated projection of the stack input",
        "2604.12946",
        {"reinject_input": True, "learned_reinject_input_gate": True},
        mems_ok=False,
    ),
    FlagCase(
        "zero_init_branch_output",
        "branch output projections start at zero",
        "",
        {"zero_init_branch_output": True},
    ),
    FlagCase(
        "use_simple_rmsnorm", "RMSNorm without a gain", "1910.07467", {"use_simple_rmsnorm": True}
    ),
    FlagCase(
        "softclamp_output",
        "stack output soft-clamped by tanh before the final norm",
        "2408.00118",
        {"softclamp_output": True, "softclamp_output_value": 2.0},
    ),
    FlagCase(
        "use_dynamic_tanh",
        "tanh(alpha x) with a learned scale instead of each norm",
        "2503.10622",
        {"use_dynamic_tanh": True, "dynamic_tanh_init_alpha": 0.8},
    ),
    FlagCase(
        "use_derf",
        "erf(alpha x + s) with learned scalars instead of each norm",
        "2512.10938",
        {"use_derf": True},
    ),
    FlagCase(
        "use_adaptive_layernorm",
        "LayerNorm gains and branch gates regressed from a condition (adaLN-Zero)",
        "2212.09748",
        {"use_adaptive_layernorm": True, "use_adaptive_layerscale": True, "dim_condition": 6},
    ),
    FlagCase(
        "use_adaptive_rmsnorm",
        "RMSNorm gains regressed from a condition through an MLP",
        "2212.09748",
        {"use_adaptive_rmsnorm": True, "dim_condition": 6, "adaptive_condition_mlp": True},
    ),
    FlagCase(
        "shift_tokens",
        "feature chunks of each layer input shifted from earlier tokens",
        "2305.13048",
        {"shift_tokens": 1},
        mems_ok=False,  # a shifted feed-forward needs its earlier inputs, which mems do not hold
        row_conv=True,
    ),
    FlagCase(
        "weight_tie_layers",
        "one block of weights run depth times",
        "1807.03819",
        {"weight_tie_layers": True},
    ),
    FlagCase(
        "layers_execute_order",
        "layers run in a given order (a repeated layer shares its weights)",
        "",
        {"layers_execute_order": (2, 3, 0, 1)},
    ),
    FlagCase(
        "layer_schedule",
        "per-layer values of block options (here ff_mult)",
        "",
        {"ff_mult": (2, 3)},
    ),
)
