"""The registry of flags: one entry per flag, with a tiny example setting and its paper.

Property tests (causality, masking, SDPA vs manual, cache == full forward, mems == full
context, state_dict round trip) iterate over this registry, so a new flag is covered by every
invariant as soon as it is registered here. The README flag table lists the same entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FlagCase:
    """One flag: ``layers`` goes to the stack, ``wrapper`` to TransformerWrapper.

    The properties below are written by hand from the papers, not read from the library, so
    that the tests that use them check the library against an independent expectation.
    """

    name: str
    summary: str
    paper: str = ""
    layers: dict[str, Any] = field(default_factory=dict)
    wrapper: dict[str, Any] = field(default_factory=dict)
    causal_ok: bool = True  # meaningful on a Decoder
    needs_scores: bool = False  # its feature needs the raw scores, which fused kernels hide
    kernel: str = "sdpa"  # the kernel a layer with this flag alone runs by default
    probs: str = "softmax"  # "sparse": exact zeros among seen keys; "mixed": rows need not sum to 1
    cacheable: bool = True  # decodes with a KV cache (else generation falls back, with a warning)
    exact: bool = True  # exact attention (an approximation is compared with a tolerance)
    relative: bool = False  # a relative position scheme (absolute positions are switched off)
    any_mask: bool = True  # applies an arbitrary attn_mask (False: only causality and padding)
    encoder_ok: bool = True  # meaningful without a causal mask (else refused on an Encoder)
    row_conv: bool = (
        False  # convolves over neighbouring positions: padding between real ones refused
    )


FLAGS: tuple[FlagCase, ...] = (
    FlagCase("default", "pre-norm softmax attention on SDPA"),
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
    FlagCase(
        "attn_num_mem_kv",
        "learned persistent memory key/values",
        "1907.01470",
        {"attn_num_mem_kv": 2},
    ),
    FlagCase(
        "attn_sparse_topk",
        "keep the top-k logits per query",
        "1912.11637",
        {"attn_sparse_topk": 3},
        needs_scores=True,
        kernel="manual",
        probs="sparse",
    ),
    FlagCase(
        "attn_use_entmax15",
        "entmax-1.5 instead of softmax",
        "1909.00015",
        {"attn_use_entmax15": True},
        needs_scores=True,
        kernel="manual",
        probs="sparse",
    ),
    FlagCase(
        "attn_talking_heads",
        "mix heads before and after softmax",
        "2003.02436",
        {"attn_talking_heads": True},
        needs_scores=True,
        kernel="manual",
        probs="mixed",
    ),
    FlagCase(
        "attn_pre_talking_heads",
        "mix heads before softmax",
        "2003.02436",
        {"attn_pre_talking_heads": True},
        needs_scores=True,
        kernel="manual",
    ),
    FlagCase(
        "attn_post_talking_heads",
        "mix heads after softmax",
        "2003.02436",
        {"attn_post_talking_heads": True},
        needs_scores=True,
        kernel="manual",
        probs="mixed",
    ),
    FlagCase(
        "attn_collab_heads",
        "shared q/k projection with per-head mixing",
        "2006.16362",
        {"attn_collab_heads": True, "attn_collab_compression": 0.5},
    ),
    FlagCase(
        "attn_on_attn", "attention output gated by its query", "1908.06954", {"attn_on_attn": True}
    ),
    FlagCase(
        "attn_kv_heads",
        "grouped-query attention: each key/value head serves a group of query heads",
        "2305.13245",
        {"heads": 4, "attn_kv_heads": 2},
    ),
    FlagCase(
        "attn_one_kv_head",
        "multi-query attention: one key/value head for every query head",
        "1911.02150",
        {"attn_one_kv_head": True},
    ),
    FlagCase(
        "attn_use_latent_kv",
        "multi-head latent attention: keys/values from a cached low-rank latent",
        "2405.04434",
        {"attn_use_latent_kv": True, "attn_dim_latent_kv": 12},
    ),
    FlagCase(
        "attn_latent_rope_subheads",
        "MLA with decoupled rotary keys shared by the heads",
        "2405.04434",
        {
            "attn_use_latent_kv": True,
            "attn_dim_latent_kv": 12,
            "attn_latent_rope_subheads": 1,
            "rotary_pos_emb": True,
        },
        relative=True,
    ),
    FlagCase(
        "attn_latent_absorb",
        "MLA attending in the latent space (W_uk in the query, W_uv after) on every call",
        "2405.04434",
        {"attn_use_latent_kv": True, "attn_dim_latent_kv": 12, "attn_latent_absorb": True},
    ),
    FlagCase(
        "attn_use_latent_q",
        "queries through a low-rank latent",
        "2405.04434",
        {"attn_use_latent_q": True, "attn_dim_latent_q": 12},
    ),
    FlagCase(
        "attn_mta",
        "Multi-Token Attention: key-query convolution of the logits (query past, key both ways)",
        "2504.00927",
        {"attn_mta": True, "attn_mta_kernel_q": 3, "attn_mta_kernel_k": 3},
        needs_scores=True,
        kernel="manual",
        row_conv=True,
    ),
    FlagCase(
        "attn_mta_post_conv",
        "Multi-Token Attention: key-query convolution of the weights after the softmax",
        "2504.00927",
        {
            "attn_mta": True,
            "attn_mta_pre_conv": False,
            "attn_mta_post_conv": True,
            "attn_mta_kernel_q": 2,
            "attn_mta_kernel_k": 3,
        },
        needs_scores=True,
        kernel="manual",
        probs="mixed",
        row_conv=True,
    ),
    FlagCase(
        "attn_mta_post_head_mix",
        "Multi-Token Attention with every part: both convolutions, head mixing in groups, "
        "group norm with depth scaling and gate",
        "2504.00927",
        {
            "attn_mta": True,
            "attn_mta_kernel_q": 3,
            "attn_mta_kernel_k": 3,
            "attn_mta_post_conv": True,
            "attn_mta_head_kernel": 2,
            "attn_mta_pre_head_mix": True,
            "attn_mta_post_head_mix": True,
            "attn_mta_group_norm": True,
            "attn_mta_depth_scale": True,
            "attn_mta_gate": True,
        },
        needs_scores=True,
        kernel="manual",
        probs="mixed",
        row_conv=True,
    ),
    FlagCase(
        "attn_linear_attn",
        "linear attention: elu+1 feature map, O(n) sums, causal chunkwise, running-state decoding",
        "2006.16236",
        {"attn_linear_attn": True, "attn_linear_attn_chunk": 3},
        kernel="linear",
        any_mask=False,
    ),
    FlagCase(
        "attn_performer",
        "Performer FAVOR+: positive orthogonal random features estimate softmax attention",
        "2009.14794",
        {"attn_performer": True, "attn_performer_nb_features": 16, "attn_linear_attn_chunk": 3},
        kernel="linear",
        exact=False,
        any_mask=False,
    ),
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
    ),
    FlagCase(
        "num_memory_tokens",
        "learned memory tokens prepended to the sequence",
        "2006.11527",
        {},
        {"num_memory_tokens": 2},
    ),
    FlagCase(
        "scaled_sinu_pos_emb",
        "fixed sinusoids with a learned scale",
        "",
        {},
        {"scaled_sinu_pos_emb": True},
    ),
    FlagCase(
        "sinusoidal_pos_emb",
        "the paper's fixed sinusoidal absolute positions",
        "1706.03762",
        {},
        {"sinusoidal_pos_emb": True},
    ),
    FlagCase(
        "tie_embedding",
        "logits through the token embedding matrix",
        "",
        {},
        {"tie_embedding": True},
    ),
    FlagCase(
        "use_abs_pos_emb=False",
        "no positions at all (or only relative ones)",
        "",
        {},
        {"use_abs_pos_emb": False},
    ),
)


def flag_case(name: str) -> FlagCase:
    """The registry entry called ``name``."""
    for case in FLAGS:
        if case.name == name:
            return case
    raise KeyError(f"no flag case named {name!r}")
