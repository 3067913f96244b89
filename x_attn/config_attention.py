"""The typed, frozen options of one attention layer (``attn_*`` / ``cross_attn_*`` flags).

:class:`AttentionConfig` with its ``validate`` (ValueError naming the flag and the fix) and the
checks of linear attention, Multi-Token Attention and windows; re-exported by :mod:`x_attn.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from x_attn.config_checks import validate_attention_extras
from x_attn.config_efficient import validate_efficient
from x_attn.config_sparse import validate_sparse
from x_attn.utils import check_positive_int, check_probability


@dataclass(frozen=True)
class AttentionConfig:
    """Options of one attention block (``attn_*`` / ``cross_attn_*`` flags)."""

    dim_head: int = 64
    dropout: float = 0.0
    flash: bool | None = None  # None: automatic; True: fused required; False: manual path
    num_mem_kv: int = 0
    sparse_topk: int | None = None
    use_entmax15: bool = False
    cog_signed: bool = False  # signed softmax, negative weights (features/cog_signed.py)
    inverted_attention: bool = False  # softmax over the queries (features/inverted.py)
    sigmoid: bool = False  # sigmoid attention, no normalisation (features/sigmoid_attn.py)
    talking_heads: bool = False
    pre_talking_heads: bool = False
    post_talking_heads: bool = False
    collab_heads: bool = False
    collab_compression: float = 0.3
    on_attn: bool = False
    qk_norm: bool = False
    qk_norm_groups: int = 1
    qk_norm_scale: float = 10.0
    qk_norm_dim_scale: bool = False
    l2_distance: bool = False  # logits -|q - k|^2 (x_attn/attention/features/l2_distance.py)
    qk_rmsnorm: bool = False
    k_rmsnorm: bool = False
    value_rmsnorm: bool = False
    softclamp_logits: bool = False
    logit_softclamp_value: float = 50.0
    add_zero_kv: bool = False
    head_learned_sink: bool = False
    gate_value_heads: bool = False
    head_scale: bool = False
    gate_values: bool = False
    gate_values_rank: int | None = None
    gate_values_headwise: bool = False
    output_gate: bool = False
    output_gate_rank: int | None = None
    output_gate_headwise: bool = False
    low_rank_silu_gates: bool = True
    swiglu_values: bool = False
    kv_heads: int | None = None  # key/value heads (grouped-query attention); None = heads
    one_kv_head: bool = False  # multi-query attention: one key/value head
    use_latent_kv: bool = False  # multi-head latent attention (MLA): keys/values from a latent
    dim_latent_kv: int | None = None  # its width d_c
    use_latent_q: bool = False  # queries through a low-rank latent
    dim_latent_q: int | None = None  # its width
    latent_rope_subheads: int | None = None  # MLA rotary key heads (default 1 with rotary)
    latent_absorb: bool | None = None  # MLA: None = per call; True absorbed; False materialised
    dim_context: int | None = None  # width of a cross-attention context (None = dim)
    qkv_bias: bool = False  # biases on the query/key/value projections (GPT-2, Qwen2)
    out_bias: bool = False  # a bias on the output projection (GPT-2)
    dim_out: int | None = None  # width of the output projection (None = dim; not in a stack)
    orthog_projected_values: bool = False  # XSA over each token's heads (features/exclusive.py)
    orthog_projected_values_per_head: bool = False  # XSA per head
    use_rel_proj_pos_bias: bool = False  # query-projected distance basis (rel_proj_bias.py)
    rel_proj_num_distance_basis: int = 16
    rel_proj_max_dist: int = 1024
    gumbel_softmax: bool = False  # stochastic attention (features/gumbel.py)
    gumbel_softmax_temp: float = 1.0
    gumbel_softmax_hard: bool = True
    hard: bool = False  # one-hot argmax attention, softmax gradient (features/gumbel.py)
    laser: bool = False  # LASER: log(A exp(V)) (features/laser.py)
    laser_softclamp_value: float = 15.0  # the soft cap of the values before exp
    data_dependent_alibi: bool = False  # forgetting transformer (features/forgetting.py)
    use_cope: bool = False  # contextual positions (features/cope.py); causal self-attention
    cope_max_pos: int = 16  # positions 0 .. cope_max_pos - 1 have embeddings

    def key_value_heads(self, heads: int) -> int:
        """Key/value heads of a layer with ``heads`` query heads."""
        return 1 if self.one_kv_head else self.kv_heads or heads

    # Multi-Token Attention (x_attn/attention/features/multi_token.py); self-attention only
    mta: bool = False
    mta_kernel_q: int = 6
    mta_kernel_k: int = 11
    mta_pre_conv: bool = True
    mta_post_conv: bool = False
    mta_head_kernel: int | None = None
    mta_pre_head_mix: bool = False
    mta_post_head_mix: bool = False
    mta_group_norm: bool = False
    mta_depth_scale: bool = False
    mta_gate: bool = False
    mta_layers: tuple[int, ...] | None = None
    # sliding window + global tokens (x_attn/attention/features/window.py); self-attention only
    window_size: int | None = None
    window_dilation: int = 1
    global_tokens: tuple[int, ...] = ()
    # Sparse Transformer patterns and BigBird (x_attn/attention/features/sparse.py)
    sparse_pattern: str | None = None  # "strided" | "fixed"
    sparse_block: int = 128  # l: the stride (strided) or the block (fixed)
    sparse_summary: int | None = None  # c: summary positions per block (fixed; default 8)
    bigbird: bool = False
    bigbird_block: int = 64
    bigbird_window_blocks: int = 3
    bigbird_global_blocks: int = 2
    bigbird_random_blocks: int = 3
    bigbird_seed: int = 0
    # linear attention (x_attn/attention/features/linear_attn.py, kernels/linear.py)
    linear_attn: bool = False
    linear_attn_chunk: int = 64  # causal chunk of linear_attn and performer
    # Performer FAVOR+ (x_attn/attention/features/performer.py)
    performer: bool = False
    performer_nb_features: int | None = None  # default int(d ln d), d the query/key head dim
    performer_redraw_interval: int | None = 1000  # training forward calls; None: never
    # Reformer LSH attention (x_attn/attention/features/lsh.py, kernels/lsh.py)
    lsh: bool = False
    lsh_bucket_size: int = 64  # chunk length of the sorted sequence
    lsh_n_hashes: int = 8  # hash rounds
    lsh_n_buckets: int | None = None  # None: 1 when n <= bucket size, else about n / bucket size
    # Linformer (x_attn/attention/features/linformer.py); encoder self-attention only
    linformer: bool = False
    linformer_k: int = 256  # projected length
    linformer_max_seq_len: int | None = None  # the fixed length n of the projections (required)
    linformer_share: str = "none"  # "none", "headwise" (one E, F per layer) or "kv" (E = F)

    @property
    def uses_pre_talking_heads(self) -> bool:
        return self.talking_heads or self.pre_talking_heads

    @property
    def uses_post_talking_heads(self) -> bool:
        return self.talking_heads or self.post_talking_heads

    def validate(self, owner: str, prefix: str = "attn_") -> None:
        check_positive_int(f"{prefix}dim_head", self.dim_head, owner)
        check_probability(f"{prefix}dropout", self.dropout, owner)
        if self.flash not in (None, True, False):
            raise TypeError(f"{owner}: '{prefix}flash' must be None, True or False")
        if self.num_mem_kv < 0:
            raise ValueError(f"{owner}: '{prefix}num_mem_kv' must be >= 0, got {self.num_mem_kv}")
        if self.sparse_topk is not None:
            check_positive_int(f"{prefix}sparse_topk", self.sparse_topk, owner)
        if self.sparse_topk is not None and self.use_entmax15:
            raise ValueError(
                f"{owner}: '{prefix}sparse_topk' and '{prefix}use_entmax15' both replace the "
                "softmax's support; choose one"
            )
        for name in ("dim_context", "dim_out"):
            if getattr(self, name) is not None:
                check_positive_int(f"{prefix}{name}", getattr(self, name), owner)
        self._validate_heads(owner, prefix)
        self._validate_latent(owner, prefix)
        if not 0.0 < self.collab_compression <= 1.0:
            raise ValueError(
                f"{owner}: '{prefix}collab_compression' must be in (0, 1], "
                f"got {self.collab_compression}"
            )
        validate_attention_extras(self, owner, prefix)
        _validate_mta(self, owner, prefix)
        _validate_window(self, owner, prefix)
        _validate_linear(self, owner, prefix)
        validate_sparse(self, owner, prefix)
        validate_efficient(self, owner, prefix)

    def _grouped_flag(self) -> str | None:
        """The flag that sets fewer key/value heads ("one_kv_head" or "kv_heads"), if any."""
        if self.one_kv_head:
            return "one_kv_head"
        return "kv_heads" if self.kv_heads is not None else None

    def _validate_heads(self, owner: str, prefix: str) -> None:
        """Key/value head layouts: one spelling at a time, on a projection that has them."""
        for name in ("kv_heads", "dim_latent_kv", "dim_latent_q", "latent_rope_subheads"):
            if getattr(self, name) is not None:
                check_positive_int(f"{prefix}{name}", getattr(self, name), owner)
        grouped, mla = self._grouped_flag(), self.use_latent_kv
        clashes = []
        if self.one_kv_head and self.kv_heads is not None:
            clashes.append(("one_kv_head", "kv_heads", "one_kv_head=True means kv_heads=1"))
        if grouped and self.collab_heads:
            clashes.append((grouped, "collab_heads", "collaborative heads share one key head"))
        if grouped and mla:
            clashes.append(("use_latent_kv", grouped, "every head already reads one latent"))
        if mla and self.num_mem_kv > 0:
            why = "memory key/values are per-head keys, which the absorbed latent path never forms"
            clashes.append(("use_latent_kv", "num_mem_kv", why))
        if self.use_latent_q and self.collab_heads:
            clashes.append(("use_latent_q", "collab_heads", "collab heads project queries alike"))
        for a, b, why in clashes:
            raise ValueError(f"{owner}: '{prefix}{a}' and '{prefix}{b}': {why}; choose one")

    def _validate_latent(self, owner: str, prefix: str) -> None:
        """Latent widths come with their switch; the options of MLA need MLA."""
        for switch, width in (("use_latent_kv", "dim_latent_kv"), ("use_latent_q", "dim_latent_q")):
            on, given = getattr(self, switch), getattr(self, width) is not None
            if on and not given:
                raise ValueError(
                    f"{owner}: '{prefix}{switch}=True' needs '{prefix}{width}', the width of the "
                    "latent (DeepSeek-V2 uses 4 * dim_head for keys/values)"
                )
            if given and not on:
                raise ValueError(
                    f"{owner}: '{prefix}{width}' is set but '{prefix}{switch}' is False; set "
                    f"{prefix}{switch}=True or drop {prefix}{width}"
                )
        for name in ("latent_rope_subheads", "latent_absorb"):
            if getattr(self, name) is not None and not self.use_latent_kv:
                raise ValueError(
                    f"{owner}: '{prefix}{name}' is an option of multi-head latent attention; "
                    f"set {prefix}use_latent_kv=True (and {prefix}dim_latent_kv) or drop it"
                )


def _validate_linear(config: AttentionConfig, owner: str, prefix: str) -> None:
    """Linear attention and Performer options: sizes, and none without its mechanism."""
    check_positive_int(f"{prefix}linear_attn_chunk", config.linear_attn_chunk, owner)
    if config.linear_attn_chunk != 64 and not (config.linear_attn or config.performer):
        raise ValueError(
            f"{owner}: '{prefix}linear_attn_chunk' sizes the causal scan of linear attention, "
            f"which is off; set {prefix}linear_attn=True (or {prefix}performer=True) or drop "
            f"{prefix}linear_attn_chunk"
        )
    for name, unset in (("performer_nb_features", None), ("performer_redraw_interval", 1000)):
        value = getattr(config, name)
        if value is not None:
            check_positive_int(f"{prefix}{name}", value, owner)
        if value != unset and not config.performer:
            raise ValueError(
                f"{owner}: '{prefix}{name}' sets Performer's random features, which are off; "
                f"set {prefix}performer=True or drop {prefix}{name}"
            )


def _validate_mta(config: AttentionConfig, owner: str, prefix: str) -> None:
    """Multi-Token Attention options: sizes, and no option that would have no effect."""
    if not config.mta:
        names = [option.name for option in fields(config) if option.name.startswith("mta_")]
        _refuse_set(
            config, names, f"'{prefix}mta' is False", f"set {prefix}mta=True", owner, prefix
        )
        return
    check_positive_int(f"{prefix}mta_kernel_q", config.mta_kernel_q, owner)
    check_positive_int(f"{prefix}mta_kernel_k", config.mta_kernel_k, owner)
    if config.mta_kernel_k % 2 == 0:
        raise ValueError(
            f"{owner}: '{prefix}mta_kernel_k' must be odd (the key kernel is centred on the "
            f"key: (c_k - 1) / 2 keys on each side), got {config.mta_kernel_k}"
        )
    mixes = config.mta_pre_head_mix or config.mta_post_head_mix
    if not (config.mta_pre_conv or config.mta_post_conv or mixes):
        raise ValueError(
            f"{owner}: {prefix}mta=True with {prefix}mta_pre_conv=False and nothing else to "
            f"convolve; turn on {prefix}mta_post_conv, {prefix}mta_pre_head_mix or "
            f"{prefix}mta_post_head_mix"
        )
    if config.mta_head_kernel is not None:
        check_positive_int(f"{prefix}mta_head_kernel", config.mta_head_kernel, owner)
        if not mixes:
            raise ValueError(
                f"{owner}: '{prefix}mta_head_kernel' sizes the head mixing, which is off; "
                f"set {prefix}mta_pre_head_mix or {prefix}mta_post_head_mix, or drop it"
            )
    if config.mta_depth_scale and not config.mta_group_norm:
        raise ValueError(
            f"{owner}: '{prefix}mta_depth_scale' scales the group norm, which is off; "
            f"set {prefix}mta_group_norm=True or drop {prefix}mta_depth_scale"
        )
    _validate_mta_layers(config.mta_layers, owner, prefix)


def _validate_mta_layers(layers: tuple[int, ...] | None, owner: str, prefix: str) -> None:
    if layers is None:
        return
    ok = all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)
    if not layers or not ok or len(set(layers)) != len(layers):
        raise ValueError(
            f"{owner}: '{prefix}mta_layers' must be a non-empty tuple of distinct self-attention "
            f"layer indices (ints >= 0, e.g. (2, 6, 10)), got {layers!r}"
        )


def _refuse_set(config, names, why: str, fix: str, owner: str, prefix: str) -> None:
    """ValueError for the first option of ``names`` set away from its default (it has no effect)."""
    for name in names:
        if getattr(config, name) != getattr(AttentionConfig, name):
            raise ValueError(
                f"{owner}: '{prefix}{name}' is set but {why}; {fix} or drop {prefix}{name}"
            )


def _validate_window(config: AttentionConfig, owner: str, prefix: str) -> None:
    """Sliding-window options: positive sizes, distinct positions, nothing set without a window."""
    if config.window_size is None:
        names = ("window_dilation", "global_tokens")
        fix = f"set {prefix}window_size (keys per window)"
        _refuse_set(config, names, f"'{prefix}window_size' is None", fix, owner, prefix)
        return
    check_positive_int(f"{prefix}window_size", config.window_size, owner)
    check_positive_int(f"{prefix}window_dilation", config.window_dilation, owner)
    tokens = config.global_tokens
    if tokens and config.mta:
        raise ValueError(
            f"{owner}: '{prefix}global_tokens' with '{prefix}mta': a decoding window cache keeps "
            "the global keys next to the window's keys, out of position order, which the key "
            f"convolution of Multi-Token Attention would mix as neighbours; drop one of them"
        )
    ok = all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in tokens)
    if not ok or len(set(tokens)) != len(tokens):
        raise ValueError(
            f"{owner}: '{prefix}global_tokens' must be a tuple of distinct absolute positions "
            f"(ints >= 0, e.g. (0,)), got {tokens!r}"
        )
