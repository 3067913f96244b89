"""Registry entries of positional methods: rotary and its rescalings, xPos, PoPE, the
forgetting transformer and CoPE, T5 / ALiBi / dynamic biases, Shaw, position-infused attention.

See :mod:`x_attn.registry` for what an entry holds and how the tests use it.
"""

from __future__ import annotations

from x_attn.registry.case import FlagCase

POSITIONAL: tuple[FlagCase, ...] = (
    FlagCase(
        "rotary_pos_emb",
        "rotary position embedding on q/k",
        "2104.09864",
        {"rotary_pos_emb": True},
        relative=True,
    ),
    FlagCase(
        "rotary_emb_dim",
        "partial rotary: only the first dims of each head rotate",
        "2104.09864",
        {"rotary_pos_emb": True, "rotary_emb_dim": 4},
        relative=True,
    ),
    FlagCase(
        "rotary_interleaved",
        "rotary pairs (2i, 2i + 1) instead of (i, i + r/2)",
        "2104.09864",
        {"rotary_pos_emb": True, "rotary_interleaved": True},
        relative=True,
    ),
    FlagCase(
        "rotary_interpolation_factor",
        "position interpolation: positions divided by the factor",
        "2306.15595",
        {"rotary_pos_emb": True, "rotary_interpolation_factor": 2.0},
        relative=True,
    ),
    FlagCase(
        "rotary_base_rescale_factor",
        "NTK-aware rotary base rescaling",
        "",
        {"rotary_pos_emb": True, "rotary_base_rescale_factor": 4.0},
        relative=True,
    ),
    FlagCase(
        "rotary_yarn_factor",
        "YaRN: NTK-by-parts frequencies and attention temperature",
        "2309.00071",
        {"rotary_pos_emb": True, "rotary_yarn_factor": 4.0, "rotary_yarn_original_max_len": 8},
        relative=True,
    ),
    FlagCase(
        "rotary_llama3_factor",
        "Llama 3.1 rotary frequency rescaling",
        "",
        {"rotary_pos_emb": True, "rotary_llama3_factor": 8.0, "rotary_llama3_original_max_len": 16},
        relative=True,
    ),
    FlagCase(
        "rotary_xpos",
        "xPos: rotary with a per-pair exponential decay over distance",
        "2212.10554",
        {"rotary_xpos": True, "rotary_xpos_scale_base": 64},
        relative=True,
        encoder_ok=False,
    ),
    FlagCase(
        "polar_pos_emb",
        "PoPE: softplus magnitudes, phases by position (d frequencies), learned key phase",
        "2509.10534",
        {"polar_pos_emb": True},
        relative=True,
    ),
    FlagCase(
        "attn_data_dependent_alibi",
        "forgetting transformer: logits decay by the summed log forget gates between key and query",
        "2503.02130",
        {"attn_data_dependent_alibi": True},
        encoder_ok=False,
    ),
    FlagCase(
        "attn_use_cope",
        "CoPE: positions counted by sigmoid gates on the logits, interpolated embeddings",
        "2405.18134",
        {"attn_use_cope": True, "attn_cope_max_pos": 4},
        needs_scores=True,
        kernel="manual",
        encoder_ok=False,
    ),
    FlagCase(
        "rel_pos_bias",
        "T5 bucketed relative position bias, shared by all layers",
        "1910.10683",
        {"rel_pos_bias": True},
        relative=True,
    ),
    FlagCase(
        "alibi_pos_bias",
        "ALiBi linear distance penalty per head",
        "2108.12409",
        {"alibi_pos_bias": True},
        relative=True,
    ),
    FlagCase(
        "rel_pos_kwargs",
        "custom ALiBi slopes (here on the first head only)",
        "2108.12409",
        {"alibi_pos_bias": True, "alibi_num_heads": 1, "rel_pos_kwargs": {"slopes": [0.7]}},
        relative=True,
    ),
    FlagCase(
        "dynamic_pos_bias",
        "an MLP maps each distance to a bias per head",
        "2111.09883",
        {"dynamic_pos_bias": True},
        relative=True,
    ),
    FlagCase(
        "dynamic_pos_bias_log_distance",
        "dynamic bias on log distances, 3 layers with LayerNorm",
        "2111.09883",
        {
            "dynamic_pos_bias": True,
            "dynamic_pos_bias_log_distance": True,
            "dynamic_pos_bias_mlp_depth": 3,
            "dynamic_pos_bias_norm": True,
        },
        relative=True,
    ),
    FlagCase(
        "shaw_rel_pos",
        "learned clipped relative keys and values (Shaw et al.)",
        "1803.02155",
        {"shaw_rel_pos": True, "shaw_max_distance": 3},
        needs_scores=True,
        kernel="manual",
        relative=True,
    ),
    FlagCase(
        "shaw_rel_values",
        "Shaw relative keys only (=False): a bias, fused kernel",
        "1803.02155",
        {"shaw_rel_pos": True, "shaw_max_distance": 3, "shaw_rel_values": False},
        relative=True,
    ),
    FlagCase(
        "position_infused_attn",
        "sinusoids added to q/k inputs of every layer, not v",
        "2012.15832",
        {"position_infused_attn": True},
        relative=True,
    ),
)
