"""The layer loop of a stack: each layer's block between its norm and its residual rule.

Shape legend: b batch, n sequence, d model dim, m memory length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from x_attn.layers.block import StackLayer

if TYPE_CHECKING:
    from x_attn.layers.stack import LayerIntermediates


def run_layers(
    layers: list[StackLayer], x: Tensor, state: dict[str, Any], inter: LayerIntermediates
) -> Tensor:
    """Run ``layers`` in order on ``x`` (b, n, d).

    ``state`` holds the forward's inputs (context, masks, positions, mems, cache entries,
    return_attn); ``inter`` collects the hiddens, kernels and attention maps.
    """
    prev: dict[str, Tensor | None] = {"a": None, "c": None}
    counters = {"attn": 0, "self": 0}
    for layer in layers:
        residual = x
        h = layer.normed(x)
        if layer.kind == "f":
            out = layer.block(h)
        else:
            if layer.kind == "a":
                inter.hiddens.append(x)
            out, ai = _attend(layer, h, state, prev, counters)
            prev[layer.kind] = ai.logits
            inter.kernels.append(ai.kernel)
            if ai.probs is not None and state["return_attn"]:
                inter.attn_maps.append(ai.probs)
        x = layer.merge(out, residual)
    return x


def _attend(layer: StackLayer, h: Tensor, state: dict, prev: dict, counters: dict):
    """One attention layer's call: self-attention (with its memory) or cross-attention."""
    entry = state["entries"][counters["attn"]]
    counters["attn"] += 1
    if layer.kind == "c":
        return layer.block(
            h,
            state["context"],
            context_mask=state["context_mask"],
            prev_logits=prev["c"],
            cache=entry,
            return_attn=state["return_attn"],
        )
    mems = state["mems"]
    mem = None if mems is None else layer.normed(mems[counters["self"]])
    counters["self"] += 1
    return layer.block(
        h,
        mask=state["mask"],
        attn_mask=state["attn_mask"],
        positions=state["positions"],
        prev_logits=prev["a"],
        mem=mem,
        cache=entry,
        return_attn=state["return_attn"],
    )
