"""Registry entries of efficient attention: sliding windows and global tokens, sparse patterns,
BigBird, linear attention, Performer, LSH (Reformer), Linformer.

See :mod:`x_attn.registry` for what an entry holds and how the tests use it.
"""

from __future__ import annotations

from x_attn.registry.case import FlagCase

EFFICIENT: tuple[FlagCase, ...] = (
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
)
