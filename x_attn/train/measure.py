"""Measurements of a model that do not depend on the clock: cache bytes and step memory.

* KV-cache bytes per token: the model prefills two prompt lengths and the tensors its returned
  cache holds are counted; the growth between the two, per token, is the per-token cost and
  the rest is a fixed part (a running state, learned memories). Nothing comes from a formula.
* Training-step memory: bytes of the weights, their gradients, AdamW's two moments and every
  activation saved for backward in one step (counted with saved-tensor hooks, storages counted
  once). On CUDA the allocator's own peak is reported instead.

Shape legend: b batch, n tokens.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from x_attn.train.loop import next_token_loss

__all__ = ["cache_bytes_per_token", "step_memory_bytes", "tensor_bytes"]


def tensor_bytes(obj: object) -> int:
    """Bytes of the tensors reachable from ``obj`` (public fields, lists, dicts), each once."""
    seen: set[int] = set()
    return sum(t.numel() * t.element_size() for t in _tensors(obj, seen, set()))


def _tensors(obj: object, seen: set[int], visited: set[int]):
    if isinstance(obj, Tensor):
        if id(obj) not in seen:
            seen.add(id(obj))
            yield obj
        return
    if id(obj) in visited or isinstance(obj, (str, bytes, int, float, bool, type(None))):
        return
    visited.add(id(obj))
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    elif dataclasses.is_dataclass(obj):
        children = [getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name[0] != "_"]
    else:
        children = (
            [v for k, v in vars(obj).items() if k[0] != "_"] if hasattr(obj, "__dict__") else []
        )
    for child in children:
        yield from _tensors(child, seen, visited)


@torch.no_grad()
def cache_bytes_per_token(
    model: nn.Module, lengths: tuple[int, int] | None = None
) -> tuple[float, int]:
    """(bytes per token, fixed bytes) of ``model``'s KV cache after prefilling one sequence.

    ``lengths``: the two prompt lengths (default: a quarter and a half of ``max_seq_len``).
    """
    if lengths is None:
        short = max(1, model.max_seq_len // 4)
        lengths = (short, max(short + 1, model.max_seq_len // 2))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sizes = []
    for n in lengths:
        tokens = torch.zeros(1, n, dtype=torch.long, device=device)
        _, cache = model(tokens, return_cache=True)
        sizes.append(tensor_bytes(cache))
    model.train(was_training)
    per_token = (sizes[1] - sizes[0]) / (lengths[1] - lengths[0])
    return per_token, round(sizes[0] - per_token * lengths[0])


def step_memory_bytes(model: nn.Module, windows: Tensor) -> int:
    """Bytes alive at the end of one training forward: weights, grads, AdamW state, saved
    activations (CPU); the CUDA allocator's peak over a whole step on CUDA."""
    if windows.is_cuda:
        torch.cuda.reset_peak_memory_stats(windows.device)
        next_token_loss(model, windows).backward()
        model.zero_grad(set_to_none=True)
        return torch.cuda.max_memory_allocated(windows.device)
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = next_token_loss(model, windows)
    activations = sum(b for ptr, b in storages.items() if ptr not in params)
    del loss
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return 4 * weights + activations  # weights + grads + two AdamW moments + activations
