"""The layer loop of a stack: each run of a layer, in the plan's order.

Per run (see :mod:`x_attn.layers.block` for one layer's maths): stochastic depth
(``layer_dropout``: in training a layer is skipped with its probability; Huang et al., "Deep
Networks with Stochastic Depth", arXiv 1603.09382; Fan et al., LayerDrop, arXiv 1909.11556),
token shifting with its cache entry, the block call, the ResiDual dual stream.

Cache entries, in ``state["entries"]``: one per attention run (in run order), then one per
shifted run. Shape legend: b batch, n sequence, d model dim, m memory length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from x_attn.layers.block import StackLayer
from x_attn.layers.resi_dual import DualStream

if TYPE_CHECKING:
    from x_attn.layers.intermediates import LayerIntermediates


@dataclass
class _Counters:
    attn: int = 0  # attention runs so far (their cache entries come first)
    self_attn: int = 0  # self-attention runs so far (one memory each)
    shift: int = 0  # shifted runs so far
    ff: int = 0  # feed-forward runs so far (ff_deep_embed scales)
    prev: dict[str, Tensor | None] = field(default_factory=lambda: {"a": None, "c": None})
    # the first run's raw values, by kind (value residual learning, add_value_residual)
    first_values: dict[str, Tensor | None] = field(default_factory=lambda: {"a": None, "c": None})


def run_layers(
    layers: list[StackLayer],
    order: tuple[int, ...],
    x: Tensor,
    state: dict[str, Any],
    inter: LayerIntermediates,
) -> Tensor:
    """Run ``layers[i]`` for each ``i`` in ``order`` on ``x`` (b, n, d).

    ``state`` holds the forward's inputs (context, masks, positions, mems, cache entries,
    condition, causal, return_attn, keep_hiddens, the dual stream); ``inter`` collects the
    kernels and attention maps, and with ``keep_hiddens`` the hiddens and each run's
    intermediates.
    """
    counters = _Counters()
    cond, dual, unet, skipped = state["condition"], state["dual"], state.get("unet"), {}
    keep = state["keep_hiddens"]  # False: no layer's tensors outlive its run
    inj = state.get("injection")  # reinject_input: the block reads x + g * P x0
    ff_scales = state.get("ff_scales")  # ff_deep_embed: per-token, per-run vectors
    sequence = (state["mask"], state["seq_causal"])  # for a residual rule that reads them
    for index in order:
        layer = layers[index]
        if unet is not None:  # U-Net long skips: the stream entering a mirrored block
            x = unet.at(index, x, skipped)
        if keep and layer.kind == "a":
            inter.hiddens.append(x)
        if _dropped(layer):
            _skip(layer, counters)
            continue
        if keep:
            inter.layer_hiddens.append(x)
        h = layer.normed(x if inj is None else x + inj, cond)
        mem = _layer_mem(layer, state, counters, cond)
        if layer.shift is not None:
            h, mem = _shift(layer, h, mem, state, counters)
        if layer.kind == "f":
            out = layer.run_block(h)
            if ff_scales is not None:
                out = out * ff_scales[counters.ff]
            counters.ff += 1
        else:
            out, ai = _attend(layer, h, mem, state, counters)
            _record(layer.kind, index, ai, counters, state, inter)
        out = layer.post_branch(out, cond)
        if dual is not None:
            dual.add(out)
        x = layer.merge(out, x, cond, sequence)
    return x


def _record(
    kind: str, index: int, ai: Any, counters: _Counters, state: dict, inter: LayerIntermediates
) -> None:
    """What an attention run leaves: the next run's inputs (previous logits, first values), its
    kernel, and as asked its intermediates and attention map."""
    counters.prev[kind] = ai.logits
    if counters.first_values[kind] is None:
        counters.first_values[kind] = ai.values
    inter.kernels.append(ai.kernel)
    if state["keep_hiddens"]:
        inter.attn_intermediates.append(ai)
        inter.attn_runs.append(index)
    if ai.probs is not None and state["return_attn"]:
        inter.attn_maps.append(ai.probs)


def _dropped(layer: StackLayer) -> bool:
    """Stochastic depth: in training, skip the layer with its probability."""
    return layer.training and layer.dropout > 0 and bool(torch.rand(()) < layer.dropout)


def _skip(layer: StackLayer, counters: _Counters) -> None:
    """A skipped run still owns its memory (mems stay aligned with the self-attention runs)."""
    counters.attn += layer.kind != "f"
    counters.self_attn += layer.kind == "a"
    counters.shift += layer.shift is not None
    counters.ff += layer.kind == "f"


def _layer_mem(layer: StackLayer, state: dict, counters: _Counters, cond) -> Tensor | None:
    """This self-attention run's memory, normed like its input (None for other layers)."""
    mems = state["mems"]
    if layer.kind != "a" or mems is None:
        return None
    return layer.normed(mems[counters.self_attn], cond)


def _shift(layer: StackLayer, h: Tensor, mem: Tensor | None, state: dict, counters: _Counters):
    """Shift the rows of ``h`` (b, n, d), after the memory rows when there are some (padded
    rows of either enter as zeros)."""
    rows = _zero_padding(h, state["mask"])
    if mem is not None:
        rows = torch.cat((_zero_padding(mem, state["mem_mask"]), rows), dim=1)
    entry = state["entries"][state["num_attn_runs"] + counters.shift]
    counters.shift += 1
    before = None if entry is None else entry.before(rows)
    shifted = layer.shift(rows, before)
    if entry is not None:
        entry.remember(before, rows)
    if mem is None:
        return shifted, None
    m = mem.shape[1]
    return shifted[:, m:], shifted[:, :m]


def _zero_padding(rows: Tensor, mask: Tensor | None) -> Tensor:
    """``rows`` (b, n, d) with the padded ones (``mask`` False) set to zero."""
    return rows if mask is None else rows.masked_fill(~mask.unsqueeze(-1), 0.0)


def _attend(layer: StackLayer, h: Tensor, mem: Tensor | None, state: dict, counters: _Counters):
    """One attention run: self-attention (with its memory) or cross-attention."""
    entry = state["entries"][counters.attn]
    counters.attn += 1
    common = dict(
        prev_logits=counters.prev[layer.kind],
        cache=entry,
        return_attn=state["return_attn"],
        value_residual=counters.first_values[layer.kind],
        return_intermediates=True,
    )
    if layer.kind == "c":
        context, residuals = state["context"], state.get("context_residuals")
        residual = None if residuals is None else residuals[counters.attn - counters.self_attn - 1]
        return layer.run_block(
            h,
            context if residual is None else context + residual,
            mask=state["mask"],
            context_mask=state["context_mask"],
            positions=state["positions"],
            **common,
        )
    kv = state["additional_kv"][counters.self_attn]
    counters.self_attn += 1
    return layer.run_block(
        h,
        mask=state["mask"],
        mem_mask=state["mem_mask"],
        attn_mask=state["attn_mask"],
        positions=state["positions"],
        mem=mem,
        causal=state["causal"],
        global_mask=state["global_mask"],
        additional_key_values=kv,
        additional_key_value_mask=None if kv is None else state["additional_kv_mask"],
        **common,
    )


def start_dual(x: Tensor, resi_dual: bool, scale: float) -> DualStream | None:
    """The ResiDual dual stream of a forward, or None."""
    return DualStream(x, scale) if resi_dual else None
