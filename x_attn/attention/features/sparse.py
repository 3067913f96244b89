"""Block-sparse attention patterns as layer features: the Sparse Transformer (Child et al.,
arXiv 1904.10509) and BigBird (Zaheer et al., arXiv 2007.14062).

``attn_sparse_pattern="strided"`` (stride ``attn_sparse_block`` = l) or ``"fixed"`` (block l,
``attn_sparse_summary`` = c summary positions per block, default min(8, l)) gives each
self-attention layer the merged pattern rule of :mod:`x_attn.masks.sparse`, causal in a causal
stack (the paper's setting) and symmetric otherwise. ``attn_bigbird=True`` gives it the
window + global + random block rule of :mod:`x_attn.masks.bigbird`; BigBird is bidirectional,
so a causal stack refuses it at construction. Both run the block-sparse kernel
(:mod:`x_attn.kernels.block_sparse`). The Sparse Transformer decodes with the plain KV cache:
its rule is over absolute positions and any past key can lie in a later query's pattern, so
the cache holds every key (memory O(n) per layer, as for full attention) while each step
computes only its pattern's keys. Per-layer mixing (the paper's interleaved strided/fixed
layers, or full layers between sparse ones): ``per_layer(("strided", None))``.
"""

from __future__ import annotations

from x_attn.attention.features.spec import FeatureContext, FeatureSpec
from x_attn.masks.bigbird import BigBird
from x_attn.masks.sparse import Fixed, Strided

DEFAULT_SUMMARY = 8  # the paper's smallest c (8, 16 or 32 with l = 128 or 256)


def _sparse_rule(ctx: FeatureContext) -> Strided | Fixed:
    cfg = ctx.config
    if cfg.sparse_pattern == "strided":
        return Strided(cfg.sparse_block)
    summary = cfg.sparse_summary or min(DEFAULT_SUMMARY, cfg.sparse_block)
    return Fixed(cfg.sparse_block, summary)


def _bigbird_rule(ctx: FeatureContext) -> BigBird:
    if ctx.causal:
        raise ValueError(
            f"{ctx.flag('bigbird')}: BigBird is an encoder pattern (its global blocks attend to "
            "every position and its window and random blocks look ahead), so a causal stack "
            "(Decoder) cannot use it; use it in an Encoder, or a causal pattern such as "
            "attn_sparse_pattern='fixed' or attn_window_size in a Decoder"
        )
    cfg = ctx.config
    return BigBird(
        cfg.bigbird_block,
        cfg.bigbird_window_blocks,
        cfg.bigbird_global_blocks,
        cfg.bigbird_random_blocks,
        seed=cfg.bigbird_seed,
        layer=ctx.layer,
    )


SPARSE_SPEC = FeatureSpec(
    "sparse_pattern",
    "1904.10509",
    "mask",
    enabled=lambda ctx: ctx.config.sparse_pattern is not None and ctx.prefix == "attn_",
    rules=lambda ctx: (_sparse_rule(ctx),),
    needs=("fast:block_sparse",),
    reads_neighbours=True,  # blocks and strides count slots: padding between tokens takes some
)

BIGBIRD_SPEC = FeatureSpec(
    "bigbird",
    "2007.14062",
    "mask",
    enabled=lambda ctx: ctx.config.bigbird and ctx.prefix == "attn_",
    rules=lambda ctx: (_bigbird_rule(ctx),),
    needs=("fast:block_sparse",),
    reads_neighbours=True,
)
