"""Registry entries of TransformerWrapper options: memory tokens, absolute positions, embeddings,
recycling, looped LM, the output head.

See :mod:`x_attn.registry` for what an entry holds and how the tests use it.
"""

from __future__ import annotations

from x_attn.registry.case import FlagCase

WRAPPER: tuple[FlagCase, ...] = (
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
