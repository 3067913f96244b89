"""Named attention mechanisms: one table entry each (name -> stack flags).

The training command (``--attention NAME``), the comparison study and the docs read this one
table. A mechanism whose flags this version of x_attn does not know yet is listed as not
available, with the reason, and is never replaced by a stand-in: when its flags land, the entry
becomes available without any other change. Adding a mechanism is one line in ``CATALOG``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from x_attn.routing import known_layer_arguments

__all__ = ["CATALOG", "Mechanism", "causal_mechanisms", "mechanism"]


@dataclass(frozen=True)
class Mechanism:
    """One attention mechanism: the flags that select it on a Decoder, and its paper.

    ``flags`` is None while the flag names are not settled (the mechanism is not built yet);
    ``causal`` is False for mechanisms that cannot run in a decoder at all.
    """

    name: str
    summary: str
    flags: dict[str, Any] | None = field(default_factory=dict)
    paper: str = ""
    causal: bool = True
    note: str = ""

    @property
    def unavailable_reason(self) -> str | None:
        """Why this mechanism cannot be trained as a causal language model here, or None."""
        if not self.causal:
            return f"not causal: {self.note or 'it mixes future positions into every output'}"
        if self.flags is None:
            return f"not available in this version of x_attn{'; ' + self.note if self.note else ''}"
        missing = sorted(set(self.flags) - known_layer_arguments())
        if missing:
            return f"not available in this version of x_attn (unknown flags: {', '.join(missing)})"
        return None

    @property
    def available(self) -> bool:
        return self.unavailable_reason is None


CATALOG: tuple[Mechanism, ...] = (
    Mechanism("mha", "multi-head softmax attention, fused SDPA kernel", {}, "1706.03762"),
    Mechanism(
        "mha-manual",
        "the same attention on the readable manual kernel",
        {"attn_flash": False},
        "1706.03762",
    ),
    Mechanism(
        "mqa", "multi-query attention: one key/value head", {"attn_one_kv_head": True}, "1911.02150"
    ),
    Mechanism(
        "gqa", "grouped-query attention: 2 key/value heads", {"attn_kv_heads": 2}, "2305.13245"
    ),
    Mechanism(
        "mla",
        "multi-head latent attention: a low-rank key/value latent is cached (trained without "
        "the recipe's value residual: it forms no per-head values)",
        {"attn_use_latent_kv": True, "attn_dim_latent_kv": 32, "add_value_residual": False},
        "2405.04434",
    ),
    Mechanism(
        "mta",
        "multi-token attention: 6 x 11 key-query convolution over the attention logits",
        {"attn_mta": True},
        "2504.00927",
    ),
    Mechanism(
        "linear",
        "linear attention (elu + 1 feature map), running-state decoding",
        {"attn_linear_attn": True},
        "2006.16236",
    ),
    Mechanism(
        "performer",
        "Performer FAVOR+ random features (256), running-state decoding",
        {"attn_performer": True, "attn_performer_nb_features": 256},
        "2009.14794",
    ),
    Mechanism(
        "sliding-window",
        "causal sliding window: each query sees itself and the 31 keys before it",
        {"attn_window_size": 32},
        "2004.05150",
    ),
    Mechanism(
        "sparse-transformer",
        "Sparse Transformer fixed pattern: own block of 16 and the last 4 of every block",
        {"attn_sparse_pattern": "fixed", "attn_sparse_block": 16, "attn_sparse_summary": 4},
        "1904.10509",
    ),
    Mechanism(
        "lsh",
        "Reformer LSH attention: shared QK, 4 hash rounds, buckets of 16 (no KV cache)",
        {"attn_lsh": True, "attn_lsh_bucket_size": 16, "attn_lsh_n_hashes": 4},
        "2001.04451",
    ),
    Mechanism(
        "linformer",
        "keys and values projected along the sequence to 64 slots (encoder only)",
        {"attn_linformer": True, "attn_linformer_k": 64, "attn_linformer_max_seq_len": 256},
        "2006.04768",
        causal=False,
        note="its sequence projection mixes future keys into every one",
    ),
    Mechanism(
        "bigbird",
        "BigBird: 3 window, 2 global and 3 random blocks of 8 (encoder only)",
        {"attn_bigbird": True, "attn_bigbird_block": 8},
        "2007.14062",
        causal=False,
        note="its global tokens attend to, and are attended by, every position",
    ),
    Mechanism(
        "talking-heads",
        "heads mixed before and after the softmax",
        {"attn_talking_heads": True},
        "2003.02436",
    ),
    Mechanism(
        "topk", "only the 8 largest logits of each query", {"attn_sparse_topk": 8}, "1912.11637"
    ),
    Mechanism(
        "entmax15", "entmax-1.5 instead of softmax", {"attn_use_entmax15": True}, "1909.00015"
    ),
    Mechanism(
        "hard-attention",
        "each query reads its argmax key (straight-through softmax gradient)",
        {"attn_hard": True},
        "2410.01104",
    ),
    Mechanism(
        "sigmoid",
        "sigmoid attention: each weight sigmoid(q.k), no normalisation",
        {"attn_sigmoid": True},
        "2409.04431",
    ),
    Mechanism(
        "cog-attention",
        "cog attention: signed weights sign(s) softmax(|s|)",
        {"attn_cog_signed": True},
        "2411.07176",
    ),
    Mechanism("memory-kv", "4 learned memory key/values", {"attn_num_mem_kv": 4}, "1907.01470"),
    Mechanism(
        "collab-heads",
        "collaborative heads (shared q/k projection)",
        {"attn_collab_heads": True, "attn_collab_compression": 0.5},
        "2006.16362",
    ),
    Mechanism(
        "attn-on-attn",
        "attention on attention (output gated by its query)",
        {"attn_on_attn": True},
        "1908.06954",
    ),
    Mechanism(
        "laser",
        "LASER: log of the attended exp-values",
        {"attn_laser": True},
        "2411.03493",
    ),
    Mechanism(
        "exclusive-attn",
        "exclusive self-attention (output without the token's own value, per head)",
        {"attn_orthog_projected_values_per_head": True},
        "2603.09078",
    ),
    Mechanism(
        "residual-attn",
        "RealFormer: previous layer's logits added",
        {"residual_attn": True},
        "2012.11747",
    ),
    Mechanism(
        "qk-norm",
        "cosine-similarity attention: L2-normalized queries/keys, temperature 10",
        {"attn_qk_norm": True},
        "2010.04245",
    ),
    Mechanism(
        "l2-distance",
        "logits are minus the scaled squared query-key distance",
        {"attn_l2_distance": True},
        "2006.04710",
    ),
    Mechanism(
        "qk-rmsnorm", "RMSNorm of query and key heads", {"attn_qk_rmsnorm": True}, "2302.05442"
    ),
    Mechanism(
        "softclamp",
        "attention logits soft-capped with tanh at 50 (Gemma 2)",
        {"attn_softclamp_logits": True},
        "2408.00118",
    ),
    Mechanism(
        "attn-sink",
        "a null key with a learned logit per head (attention sink)",
        {"attn_head_learned_sink": True},
        "2508.10925",
    ),
    Mechanism(
        "zero-kv", "a zero key/value: attention may go to nothing", {"attn_add_zero_kv": True}
    ),
    Mechanism(
        "gated-attn",
        "attention output gated by a sigmoid of the input",
        {"attn_gate_values": True},
        "2505.06708",
    ),
    Mechanism(
        "value-residual",
        "ResFormer: the first layer's values mixed into every later layer's",
        {"add_value_residual": True},
        "2410.17897",
    ),
    Mechanism(
        "xpos", "xPos: rotary with a decay over distance", {"rotary_xpos": True}, "2212.10554"
    ),
    Mechanism(
        "alibi",
        "ALiBi distance penalty instead of rotary",
        {"rotary_pos_emb": False, "alibi_pos_bias": True},
        "2108.12409",
    ),
    Mechanism(
        "dynamic-bias",
        "dynamic position bias (an MLP of the log distance) instead of rotary",
        {"rotary_pos_emb": False, "dynamic_pos_bias": True, "dynamic_pos_bias_log_distance": True},
        "2111.09883",
    ),
    Mechanism(
        "shaw",
        "Shaw et al. relative keys and values (k = 16) instead of rotary",
        {"rotary_pos_emb": False, "shaw_rel_pos": True},
        "1803.02155",
    ),
    Mechanism(
        "pope",
        "PoPE: polar coordinate positions (softplus magnitudes, phases by position) for rotary",
        {"rotary_pos_emb": False, "polar_pos_emb": True},
        "2509.10534",
    ),
    Mechanism(
        "cope",
        "CoPE: contextual positions counted by gates on the logits (with rotary)",
        {"attn_use_cope": True},
        "2405.18134",
    ),
    Mechanism(
        "forgetting",
        "Forgetting Transformer: a learned forget gate decays the logits, instead of rotary",
        {"rotary_pos_emb": False, "attn_data_dependent_alibi": True},
        "2503.02130",
    ),
)


def mechanism(name: str) -> Mechanism:
    """The catalog entry ``name``; a ValueError with the closest names when unknown."""
    for entry in CATALOG:
        if entry.name == name:
            return entry
    names = [m.name for m in CATALOG]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ValueError(f"unknown attention mechanism '{name}'; {hint}known: {', '.join(names)}")


def causal_mechanisms() -> list[Mechanism]:
    """The entries that can be trained as a causal language model in this version."""
    return [m for m in CATALOG if m.available]
