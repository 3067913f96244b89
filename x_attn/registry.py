"""The registry of flags: one entry per flag, with a tiny example setting and its paper.

Property tests (causality, masking, SDPA vs manual, cache == full forward, mems == full
context, state_dict round trip) iterate over this registry, so a new flag is covered by every
invariant as soon as it is registered here. The README flag table lists the same entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn


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
    stochastic: bool = False  # training mode is random by design (stochastic depth), eval is not
    mems_ok: bool = True  # takes Transformer-XL memories (else max_mem_len is refused)
    extra_keys: int = 0  # keys without position in front of every call's (beyond attn_num_mem_kv)
    any_mask: bool = True  # applies an arbitrary attn_mask (False: only causality and padding)
    encoder_ok: bool = True  # meaningful without a causal mask (else refused on an Encoder)
    row_conv: bool = (
        False  # convolves over neighbouring positions: padding between real ones refused
    )
    # torch.compile(model, fullgraph=True) traces a train step (forward + backward) without a
    # graph break; else compile_reason says what in the mechanism stops the trace
    compiles: bool = True
    compile_reason: str = ""
    # parameters that only the wrapper's own loss trains (the logits do not depend on them)
    loss_only: tuple[str, ...] = ()


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
        compiles=False,
        compile_reason="the entmax package's Entmax15Function (an autograd.Function with a "
        "classmethod forward) cannot be inlined by dynamo",
    ),
    FlagCase(
        "attn_sigmoid",
        "sigmoid attention: sigmoid(q.k * scale) per key, no normalisation over the keys",
        "2409.04431",
        {"attn_sigmoid": True},
        needs_scores=True,
        kernel="manual",
        probs="mixed",
    ),
    FlagCase(
        "attn_cog_signed",
        "cog attention: sign(s) softmax(|s|), weights may be negative",
        "2411.07176",
        {"attn_cog_signed": True},
        needs_scores=True,
        kernel="manual",
        probs="mixed",
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
        "attn_use_rel_proj_pos_bias",
        "relative bias: a learned distance basis mixed by weights projected from each query",
        "",
        {
            "attn_use_rel_proj_pos_bias": True,
            "attn_rel_proj_num_distance_basis": 4,
            "attn_rel_proj_max_dist": 6,
        },
    ),
    FlagCase(
        "attn_gumbel_softmax",
        "stochastic attention: a hard Gumbel-softmax sample per query in training, argmax in eval",
        "1611.01144",
        {"attn_gumbel_softmax": True},
        needs_scores=True,
        kernel="manual",
        probs="sparse",
        stochastic=True,
    ),
    FlagCase(
        "attn_hard",
        "hard attention: each query reads its argmax key, softmax gradient (straight-through)",
        "2410.01104",
        {"attn_hard": True},
        needs_scores=True,
        kernel="manual",
        probs="sparse",
    ),
    FlagCase(
        "attn_laser",
        "LASER: log of the attention-weighted exp of the (soft-capped) values",
        "2411.03493",
        {"attn_laser": True},
    ),
    FlagCase(
        "attn_orthog_projected_values",
        "exclusive self-attention: each token's output without its own value (all heads)",
        "2603.09078",
        {"attn_orthog_projected_values": True},
    ),
    FlagCase(
        "attn_orthog_projected_values_per_head",
        "exclusive self-attention per head, concatenated with the all-heads projection",
        "2603.09078",
        {"attn_orthog_projected_values": True, "attn_orthog_projected_values_per_head": True},
    ),
    FlagCase(
        "attn_qk_norm",
        "L2-normalized query/key heads (by groups), learned dim scales, fixed temperature",
        "2010.04245",
        {"attn_qk_norm": True, "attn_qk_norm_groups": 2, "attn_qk_norm_dim_scale": True},
    ),
    FlagCase(
        "attn_l2_distance",
        "logits are minus the scaled squared distance between query and key",
        "2006.04710",
        {"attn_l2_distance": True},
    ),
    FlagCase(
        "attn_qk_rmsnorm",
        "RMSNorm of every query and key head before positions",
        "2302.05442",
        {"attn_qk_rmsnorm": True},
    ),
    FlagCase(
        "attn_k_rmsnorm", "RMSNorm of every key head before positions", "", {"attn_k_rmsnorm": True}
    ),
    FlagCase(
        "attn_value_rmsnorm",
        "RMSNorm of every value head before the cache",
        "",
        {"attn_value_rmsnorm": True},
    ),
    FlagCase(
        "attn_softclamp_logits",
        "tanh soft-capping of the attention logits (Gemma 2)",
        "2408.00118",
        {"attn_softclamp_logits": True, "attn_logit_softclamp_value": 2.0},
        needs_scores=True,
        kernel="manual",
    ),
    FlagCase(
        "attn_add_zero_kv",
        "a zero key/value in front: attention may go to nothing",
        "",
        {"attn_add_zero_kv": True},
        extra_keys=1,
    ),
    FlagCase(
        "attn_head_learned_sink",
        "a null key with a learned logit per head (attention sink)",
        "2508.10925",
        {"attn_head_learned_sink": True},
        extra_keys=1,
    ),
    FlagCase(
        "attn_head_scale",
        "a learned scale per head on the attention output",
        "2110.09456",
        {"attn_head_scale": True},
    ),
    FlagCase(
        "attn_gate_value_heads",
        "a sigmoid gate per head from the query input",
        "2306.12929",
        {"attn_gate_value_heads": True},
    ),
    FlagCase(
        "attn_gate_values",
        "output gated per dimension by sigmoid of a map of the query input",
        "2505.06708",
        {"attn_gate_values": True},
    ),
    FlagCase(
        "attn_output_gate",
        "low-rank gates from the input and the output itself, SiLU (SwiGLU-style)",
        "2505.06708",
        {
            "attn_output_gate": True,
            "attn_output_gate_rank": 4,
            "attn_gate_values": True,
            "attn_gate_values_headwise": True,
            "attn_swiglu_values": True,
        },
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
        "attn_latent_rope_subheads=2 without rotary",
        "MLA's decoupled keys without rotary positions (RoPE the identity)",
        "2405.04434",
        {"attn_use_latent_kv": True, "attn_dim_latent_kv": 12, "attn_latent_rope_subheads": 2},
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
        mems_ok=False,
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
        mems_ok=False,
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
        mems_ok=False,
        row_conv=True,
    ),
    FlagCase(
        "attn_window_size",
        "sliding window: each query sees the w - 1 keys before it (both ways when not causal)",
        "2004.05150",
        {"attn_window_size": 3},
        kernel="window",
        probs="sparse",
        row_conv=True,
    ),
    FlagCase(
        "attn_global_tokens",
        "dilated sliding window with global tokens that see and are seen by every position",
        "2004.05150",
        {"attn_window_size": 2, "attn_window_dilation": 2, "attn_global_tokens": (0, 7)},
        kernel="window",
        probs="sparse",
        row_conv=True,
        compiles=False,
        compile_reason="the window kernel finds the global rows and columns with nonzero() "
        "and branches on whether any exist (data-dependent shapes)",
    ),
    FlagCase(
        "attn_sparse_pattern",
        "Sparse Transformer strided pattern: the previous l positions and every l-th before",
        "1904.10509",
        {"attn_sparse_pattern": "strided", "attn_sparse_block": 3},
        kernel="block_sparse",
        probs="sparse",
        row_conv=True,
    ),
    FlagCase(
        "attn_sparse_summary",
        "Sparse Transformer fixed pattern: the own block of l and the last c of every block",
        "1904.10509",
        {"attn_sparse_pattern": "fixed", "attn_sparse_block": 3, "attn_sparse_summary": 1},
        kernel="block_sparse",
        probs="sparse",
        row_conv=True,
    ),
    FlagCase(
        "attn_bigbird",
        "BigBird: window, first/last global and seeded random blocks (encoder only)",
        "2007.14062",
        {"attn_bigbird": True, "attn_bigbird_block": 2, "attn_bigbird_random_blocks": 1},
        causal_ok=False,
        kernel="block_sparse",
        probs="sparse",
        cacheable=False,
        row_conv=True,
        compiles=False,
        compile_reason="the random blocks are drawn in forward from a torch.Generator built "
        "there, an object dynamo cannot create inside a graph",
    ),
    FlagCase(
        "attn_linear_attn",
        "linear attention: elu+1 feature map, O(n) sums, causal chunkwise, running-state decoding",
        "2006.16236",
        {"attn_linear_attn": True, "attn_linear_attn_chunk": 3},
        kernel="linear",
        any_mask=False,
        compiles=False,
        compile_reason="dynamo traces it, but the backward graph AOT autograd builds for the "
        "causal chunked sums fails at run time in torch 2.13 ('view size is not compatible')",
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
        "attn_lsh",
        "Reformer LSH attention: shared QK, angular hashing, sorted chunks, hash rounds combined",
        "2001.04451",
        {"attn_lsh": True, "attn_lsh_bucket_size": 3, "attn_lsh_n_hashes": 2},
        kernel="lsh",
        probs="sparse",
        cacheable=False,
        exact=False,
        stochastic=True,  # fresh rotations at every training forward (the paper)
        mems_ok=False,
        any_mask=False,
        compiles=False,
        compile_reason="each row's bucket count comes from its number of real keys, read "
        "from the padding into Python (a data-dependent int)",
    ),
    FlagCase(
        "attn_linformer",
        "Linformer: keys and values projected along the sequence to k slots (encoder only)",
        "2006.04768",
        {"attn_linformer": True, "attn_linformer_k": 4, "attn_linformer_max_seq_len": 40},
        causal_ok=False,
        cacheable=False,
        exact=False,
        mems_ok=False,
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
    FlagCase(
        "ff_relu_squared",
        "squared ReLU, then a LayerNorm over the hidden features",
        "2109.08668",
        {"ff_relu_squared": True, "ff_post_act_ln": True},
    ),
    FlagCase(
        "ff_custom_activation",
        "any activation module, copied per layer",
        "",
        {"ff_custom_activation": nn.Sigmoid()},
    ),
    FlagCase("ff_solu", "softmax linear unit activation", "", {"ff_solu": True}),
    FlagCase(
        "ff_softclamp_value",
        "hidden layer soft-clamped before the activation",
        "2408.00118",
        {"ff_softclamp_value": 1.0},
    ),
    FlagCase(
        "ff_glu_softclamp",
        "GLU with soft-clamped linear factor and gate, learned output multiplier",
        "",
        {"ff_glu": True, "ff_glu_softclamp": True, "ff_glu_mult_bias": True},
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
        "l2norm_embed",
        "token and learned position embeddings L2-normalised (FixNorm)",
        "1910.05895",
        {},
        {"l2norm_embed": True},
    ),
    FlagCase(
        "post_emb_norm",
        "LayerNorm after the summed input embeddings",
        "",
        {},
        {"post_emb_norm": True},
    ),
    FlagCase(
        "ff_deep_embed",
        "feed-forward outputs scaled by a learned vector per token id and layer",
        "2601.10639",
        {},
        {"ff_deep_embed": True},
    ),
    FlagCase(
        "recycling",
        "the model runs K times, each run adding a projection of the last run's outputs",
        "",
        {},
        {"recycling": True, "train_max_recycle_steps": 2},
        cacheable=False,
        mems_ok=False,
        stochastic=True,
        compiles=False,
        compile_reason="in training the number of runs is drawn per call and read back as a "
        "Python int (a data-dependent loop count)",
    ),
    FlagCase(
        "looped",
        "looped LM: the whole stack runs T times on its own output, an exit gate per run",
        "2510.25741",
        {"pre_and_post_norm": True},
        {"looped": True, "max_looped_steps": 2},
        mems_ok=False,
        loss_only=("exit_gate.weight",),  # trained by AutoregressiveWrapper's exit loss
    ),
    FlagCase(
        "emb_frac_gradient",
        "only a fraction of the gradient reaches the embeddings",
        "2105.13290",
        {},
        {"emb_frac_gradient": 0.5},
    ),
    FlagCase(
        "emb_dim",
        "embeddings of another width, projected to the model dim",
        "",
        {},
        {"emb_dim": 12},
    ),
    FlagCase(
        "use_abs_pos_emb=False",
        "no positions at all (or only relative ones)",
        "",
        {},
        {"use_abs_pos_emb": False},
    ),
    FlagCase(
        "mixture_of_softmax",
        "log P of a mixture of k softmaxes over the logits head",
        "1711.03953",
        {},
        {"mixture_of_softmax": True},
    ),
)


def flag_case(name: str) -> FlagCase:
    """The registry entry called ``name``."""
    for case in FLAGS:
        if case.name == name:
            return case
    raise KeyError(f"no flag case named {name!r}")
