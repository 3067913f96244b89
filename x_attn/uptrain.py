"""Multi-head weights to grouped-query weights: "GQA: Training Generalized Multi-Query
Transformer Models from Multi-Head Checkpoints" (Ainslie et al., arXiv 2305.13245).

The paper's uptraining starts from a multi-head checkpoint: the key and value projection heads
of each group are mean-pooled into one head (queries and the output projection stay), then
pre-training continues for a small fraction of the original steps (5% in the paper). Mean
pooling beat keeping the first head of each group or a random initialisation.

Grouping is contiguous, as everywhere in x_attn (and in SDPA's ``enable_gqa`` and Hugging
Face's ``repeat_kv``): key/value head g serves query heads g * r ... g * r + r - 1, r = h / hk.
Converting hk_old key/value heads to hk pools groups of hk_old / hk consecutive old heads.

Shape legend: h query heads, hk key/value heads, dh head dim, d input dim, m memory slots.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from x_attn.attention.features.memory_kv import MemoryKeyValues
from x_attn.attention.projections import MultiHeadProjection, Projection
from x_attn.serialization import from_config, to_config
from x_attn.utils import check_positive_int

__all__ = ["group_kv_heads", "mean_pool_heads"]

_STACKS = {"AttentionLayers", "Encoder", "Decoder", "CrossAttender"}
_HEAD_FLAGS = ("attn_one_kv_head", "cross_attn_one_kv_head", "cross_attn_kv_heads")


def mean_pool_heads(t: Tensor, heads: int, groups: int, dim: int = 0) -> Tensor:
    """Average each run of ``heads // groups`` consecutive heads along ``dim``.

    ``t`` holds ``heads`` equal blocks along ``dim`` (a (hk dh, d) projection weight, or
    (hk, m, dh) memory keys); the result holds ``groups`` blocks, block g being the mean of
    blocks g * r ... g * r + r - 1.
    """
    if heads % groups:
        raise ValueError(f"mean_pool_heads: groups={groups} must divide heads={heads}")
    return t.unflatten(dim, (groups, heads // groups, -1)).mean(dim + 1).flatten(dim, dim + 1)


def group_kv_heads(model: nn.Module, kv_heads: int) -> nn.Module:
    """A copy of ``model`` whose attention layers have ``kv_heads`` key/value heads.

    The copy is built from ``model``'s config with ``attn_kv_heads=kv_heads`` (self- and
    cross-attention); every weight is copied, except the key/value projections (and learned
    memory key/values) of each layer, which are mean-pooled within each group of heads. With
    ``kv_heads`` equal to the current number, the copy computes exactly what ``model`` does.

    Raises:
        ValueError: a layer's projection has no separate key/value heads (collaborative heads,
            latent attention), or ``kv_heads`` does not divide a layer's key/value heads.
        TypeError: ``model`` is not an x_attn model (no recorded config).
    """
    check_positive_int("kv_heads", kv_heads, "group_kv_heads")
    projections = [(n, m) for n, m in model.named_modules() if isinstance(m, Projection)]
    for name, proj in projections:
        if not isinstance(proj, MultiHeadProjection):
            raise ValueError(
                f"group_kv_heads: {name} is a {type(proj).__name__}, which has no key/value "
                "heads to pool; only multi-head projections convert"
            )
        if proj.k_heads % kv_heads:
            raise ValueError(
                f"group_kv_heads: kv_heads={kv_heads} must divide the {proj.k_heads} key/value "
                f"heads of {name}"
            )
    config = to_config(model)
    _set_kv_heads(config, kv_heads)
    state = model.state_dict()
    for name, module in model.named_modules():
        for part, heads in _pooled_parts(module):
            key = f"{name}.{part}" if name else part
            state[key] = mean_pool_heads(state[key], heads, kv_heads)
    reference = next(iter(state.values()))
    grouped = from_config(config).to(device=reference.device, dtype=reference.dtype)
    grouped.load_state_dict(state)
    return grouped.train(model.training)


def _pooled_parts(module: nn.Module) -> list[tuple[str, int]]:
    """(state-dict name within ``module``, heads) of tensors with a block per key/value head."""
    if isinstance(module, MultiHeadProjection):
        return [("to_k.weight", module.k_heads), ("to_v.weight", module.v_heads)]
    if isinstance(module, MemoryKeyValues):
        return [("mem_k", module.mem_k.shape[0]), ("mem_v", module.mem_v.shape[0])]
    return []


def _set_kv_heads(config: dict[str, Any], kv_heads: int) -> None:
    """Set ``attn_kv_heads`` on every stack of a nested model config (in place)."""
    kwargs = config["kwargs"]
    prefixes = {"XTransformer": ("enc_", "dec_")}.get(config["type"], ())
    if config["type"] in _STACKS:
        prefixes = ("",)
    for prefix in prefixes:
        for flag in _HEAD_FLAGS:
            kwargs.pop(prefix + flag, None)
        kwargs[prefix + "attn_kv_heads"] = kv_heads
    for value in kwargs.values():
        if isinstance(value, dict) and set(value) == {"model"}:
            _set_kv_heads(value["model"], kv_heads)
