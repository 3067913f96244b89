"""Reversible residual stack: activations are recomputed in backward instead of stored.

Papers: Gomez et al., "The Reversible Residual Network" (arXiv 1707.04585) and Kitaev et al.,
"Reformer: The Efficient Transformer" (arXiv 2001.04451, section 3).

Each block (f, g) maps two streams (x1, x2) to

    y1 = x1 + f(x2, **kwargs)
    y2 = x2 + g(y1)

which is inverted exactly (up to rounding) by x2 = y2 - g(y1), x1 = y1 - f(x2). The stack starts
from (x, x) and returns (y1 + y2) / 2. In training mode with grad enabled, only the two final
streams (and the keyword tensors) are saved; backward rebuilds each block's inputs from its
outputs, last block first, and backpropagates through one recomputed block at a time. The memory
for activations is then independent of depth.

Recomputation replays the global RNG state (CPU, and CUDA for a CUDA input) and the autocast
setting recorded before each branch call, so dropout masks and random projections (e.g. LSH
rotations drawn from torch's global generator) are the same as in the forward pass.

Limits (the same as torch.utils.checkpoint): f and g run twice per step, so module state
updated in forward (BatchNorm running stats, counters) is updated twice; tensors that f or g
capture from outside (not parameters, not keyword arguments) receive no gradient; double
backward is not supported.

Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

_OWNER = "ReversibleSequence"


class _ReversibleBlock(nn.Module):
    """One (f, g) pair; holds the two branches so the state_dict reads ``blocks.{i}.f/g``."""

    def __init__(self, f: nn.Module, g: nn.Module) -> None:
        super().__init__()
        self.f = f
        self.g = g

    def forward(self, x1: Tensor, x2: Tensor, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """Plain two-stream step with ordinary autograd; streams are (b, n, d)."""
        y1 = x1 + _call_branch(self.f, x2, kwargs, "f")
        y2 = x2 + _call_branch(self.g, y1, {}, "g")
        return y1, y2


def _call_branch(branch: Callable[..., Tensor], x: Tensor, kwargs: dict, name: str) -> Tensor:
    """Run one branch and check that it returns a tensor of the input's shape."""
    out = branch(x, **kwargs)
    if not isinstance(out, Tensor):
        raise TypeError(
            f"{_OWNER}: branch '{name}' must return a Tensor, got {type(out).__name__}; "
            "wrap the module so that it returns only the residual update"
        )
    if out.shape != x.shape:
        raise ValueError(
            f"{_OWNER}: branch '{name}' returned shape {tuple(out.shape)} for an input of shape "
            f"{tuple(x.shape)}; reversible branches must preserve the shape"
        )
    return out


def _validated_blocks(blocks: Any) -> list[tuple[nn.Module, nn.Module]]:
    """Check ``blocks`` is a non-empty sequence of (nn.Module, nn.Module) pairs."""
    if not isinstance(blocks, Sequence) or isinstance(blocks, (str, bytes)):
        raise TypeError(
            f"{_OWNER}: 'blocks' must be a list of (f, g) module pairs, got {type(blocks).__name__}"
        )
    if len(blocks) == 0:
        raise ValueError(f"{_OWNER}: 'blocks' is empty; pass at least one (f, g) pair")
    pairs = []
    for index, pair in enumerate(blocks):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(
                f"{_OWNER}: blocks[{index}] must be a pair (f, g), got {type(pair).__name__}"
            )
        for name, branch in zip(("f", "g"), pair):
            if not isinstance(branch, nn.Module):
                raise TypeError(
                    f"{_OWNER}: blocks[{index}] branch '{name}' must be an nn.Module, got "
                    f"{type(branch).__name__}; wrap plain functions in an nn.Module"
                )
        pairs.append((pair[0], pair[1]))
    return pairs


def _holds_grad_tensor(value: Any) -> bool:
    """True when a (possibly nested) list/tuple/dict holds a tensor that requires grad."""
    if isinstance(value, Tensor):
        return value.requires_grad
    if isinstance(value, dict):
        return any(_holds_grad_tensor(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_grad_tensor(v) for v in value)
    return False


def _split_kwargs(kwargs: dict[str, Any]) -> tuple[tuple[str, ...], list[Tensor], dict]:
    """Separate top-level tensor kwargs (autograd inputs) from everything else."""
    names = tuple(k for k, v in kwargs.items() if isinstance(v, Tensor))
    static = {k: v for k, v in kwargs.items() if not isinstance(v, Tensor)}
    for key, value in static.items():
        if _holds_grad_tensor(value):
            raise ValueError(
                f"{_OWNER}: keyword argument '{key}' holds a tensor that requires grad inside a "
                "container; its gradient cannot be returned by the reversible backward. Pass "
                "that tensor as its own top-level keyword argument, or detach it"
            )
    return names, [kwargs[k] for k in names], static


@dataclass(frozen=True)
class _RngSnapshot:
    """Global RNG state of the CPU generator and, for a CUDA input, of its device."""

    cpu: Tensor
    device: torch.device
    cuda: Tensor | None

    @classmethod
    def capture(cls, device: torch.device) -> _RngSnapshot:
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), device, cuda)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


@dataclass
class _Plan:
    """Everything the autograd function needs besides tensors; built once per forward call."""

    blocks: Sequence[_ReversibleBlock]
    kw_names: tuple[str, ...]
    static_kwargs: dict
    params: list[nn.Parameter]
    f_params: list[list[int]] = field(default_factory=list)
    g_params: list[list[int]] = field(default_factory=list)
    rng: list[tuple[_RngSnapshot, _RngSnapshot]] = field(default_factory=list)
    autocast: tuple[str, bool, torch.dtype] | None = None

    @classmethod
    def build(cls, blocks: Sequence[_ReversibleBlock], kwargs: dict) -> _Plan:
        """Index the trainable parameters of every branch (shared ones appear once)."""
        names, _, static = _split_kwargs(kwargs)
        params: list[nn.Parameter] = []
        slot: dict[int, int] = {}

        def indices(module: nn.Module) -> list[int]:
            out = []
            for p in module.parameters():
                if p.requires_grad:
                    if id(p) not in slot:
                        slot[id(p)] = len(params)
                        params.append(p)
                    out.append(slot[id(p)])
            return out

        plan = cls(blocks, names, static, params)
        for block in blocks:
            plan.f_params.append(indices(block.f))
            plan.g_params.append(indices(block.g))
        return plan

    def kwargs(self, tensors: Sequence[Tensor]) -> dict:
        return {**self.static_kwargs, **dict(zip(self.kw_names, tensors))}

    @contextmanager
    def replay(self, snapshot: _RngSnapshot) -> Iterator[None]:
        """Recompute under the recorded RNG/autocast state, then put the current RNG back."""
        current = _RngSnapshot.capture(snapshot.device)
        snapshot.restore()
        device_type, enabled, dtype = self.autocast
        autocast = torch.autocast(device_type, dtype=dtype) if enabled else nullcontext()
        try:
            with autocast:
                yield
        finally:
            current.restore()


def _grads(output: Tensor, grad_output: Tensor, inputs: list[Tensor]) -> list[Tensor | None]:
    """d output / d inputs contracted with grad_output; None where an input gets no gradient."""
    wanted = [t for t in inputs if t.requires_grad]
    if not output.requires_grad or not wanted:
        return [None] * len(inputs)
    found = iter(torch.autograd.grad(output, wanted, grad_output, allow_unused=True))
    return [next(found) if t.requires_grad else None for t in inputs]


def _add(total: Tensor | None, part: Tensor | None) -> Tensor | None:
    if part is None:
        return total
    return part if total is None else total + part


class _ReversibleFunction(torch.autograd.Function):
    """Autograd node for the whole stack: saves only the final streams and keyword tensors.

    Inputs are (x, plan, *keyword tensors, *parameters) so that autograd returns gradients for
    context tensors and parameters like for any other input (``torch.autograd.grad`` works).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, plan: _Plan, *tensors: Tensor) -> tuple[Tensor, Tensor]:
        kw_tensors = tensors[: len(plan.kw_names)]
        kwargs = plan.kwargs(kw_tensors)
        device_type = x.device.type
        plan.autocast = (
            device_type,
            torch.is_autocast_enabled(device_type),
            torch.get_autocast_dtype(device_type),
        )
        x1 = x2 = x
        for block in plan.blocks:
            rng_f = _RngSnapshot.capture(x.device)
            y1 = x1 + _call_branch(block.f, x2, kwargs, "f")
            rng_g = _RngSnapshot.capture(x.device)
            y2 = x2 + _call_branch(block.g, y1, {}, "g")
            plan.rng.append((rng_f, rng_g))
            x1, x2 = y1, y2
        ctx.plan = plan
        ctx.save_for_backward(x1, x2, *kw_tensors)
        return x1, x2

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy1: Tensor, dy2: Tensor) -> tuple[Tensor | None, ...]:
        plan: _Plan = ctx.plan
        y1, y2, *saved_kw = ctx.saved_tensors
        needs = ctx.needs_input_grad
        kw_inputs = [
            t.detach().requires_grad_() if need else t
            for t, need in zip(saved_kw, needs[2 : 2 + len(saved_kw)])
        ]
        state = _Backward(plan, plan.kwargs(kw_inputs), kw_inputs)
        for index in reversed(range(len(plan.blocks))):
            y1, y2, dy1, dy2 = state.step(index, y1, y2, dy1, dy2)
        dx = dy1 + dy2 if needs[0] else None
        return (dx, None, *state.kw_grads, *state.param_grads)


class _Backward:
    """Running gradients of the reversible backward pass (one block at a time)."""

    def __init__(self, plan: _Plan, kwargs: dict, kw_inputs: list[Tensor]) -> None:
        self.plan = plan
        self.kwargs = kwargs
        self.kw_inputs = kw_inputs
        self.kw_grads: list[Tensor | None] = [None] * len(kw_inputs)
        self.param_grads: list[Tensor | None] = [None] * len(plan.params)

    def _accumulate(self, slots: list[int], grads: list[Tensor | None]) -> None:
        for slot, grad in zip(slots, grads):
            self.param_grads[slot] = _add(self.param_grads[slot], grad)

    def step(
        self, index: int, y1: Tensor, y2: Tensor, dy1: Tensor, dy2: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """From block ``index``'s outputs and their grads, return its inputs and their grads."""
        plan, block = self.plan, self.plan.blocks[index]
        rng_f, rng_g = plan.rng[index]
        f_slots, g_slots = plan.f_params[index], plan.g_params[index]

        # y2 = x2 + g(y1): recompute g, rebuild x2, push dy2 through g.
        with torch.enable_grad(), plan.replay(rng_g):
            y1_in = y1.detach().requires_grad_()
            gy = _call_branch(block.g, y1_in, {}, "g")
        grads = _grads(gy, dy2, [y1_in, *(plan.params[s] for s in g_slots)])
        dy1 = _add(dy1, grads[0])
        self._accumulate(g_slots, grads[1:])
        x2 = (y2 - gy.detach()).detach()
        del gy, y1_in

        # y1 = x1 + f(x2): recompute f on the rebuilt x2, rebuild x1, push dy1 through f.
        with torch.enable_grad(), plan.replay(rng_f):
            x2_in = x2.requires_grad_()
            fx = _call_branch(block.f, x2_in, self.kwargs, "f")
        n_kw = len(self.kw_inputs)
        grads = _grads(fx, dy1, [x2_in, *self.kw_inputs, *(plan.params[s] for s in f_slots)])
        dx2 = _add(dy2, grads[0])
        self.kw_grads = [_add(t, g) for t, g in zip(self.kw_grads, grads[1 : 1 + n_kw])]
        self._accumulate(f_slots, grads[1 + n_kw :])
        x1 = (y1 - fx.detach()).detach()
        return x1, x2.detach(), dy1, dx2


class ReversibleSequence(nn.Module):
    """Stack of reversible two-stream residual blocks (RevNet / Reformer).

    Args:
        blocks: list of pairs (f, g) of modules; ``f(x, **kwargs)`` and ``g(x)`` each map a
            (b, n, d) tensor to a residual update of the same shape (they do not add the
            residual themselves). Keyword arguments of ``forward`` go to ``f`` only.

    In training mode with grad enabled, activations are recomputed in backward (memory of saved
    activations does not grow with depth); otherwise the plain equations run with ordinary
    autograd. Tensor keyword arguments that require grad (e.g. a cross-attention context)
    receive their gradients; tensors requiring grad nested inside lists/dicts are refused.
    """

    def __init__(self, blocks: list[tuple[nn.Module, nn.Module]]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_ReversibleBlock(f, g) for f, g in _validated_blocks(blocks))

    def forward(self, x: Tensor, **kwargs: Any) -> Tensor:
        """Run the stack.

        Args:
            x: input of shape (b, n, d).
            **kwargs: extra arguments for every ``f`` (masks, positional tables, context).

        Returns:
            (b, n, d): mean of the two streams after the last block.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"{_OWNER}: 'x' must be a Tensor of shape (b, n, d), got {type(x)}")
        if self.training and torch.is_grad_enabled():
            plan = _Plan.build(self.blocks, kwargs)
            kw_tensors = [kwargs[name] for name in plan.kw_names]
            y1, y2 = _ReversibleFunction.apply(x, plan, *kw_tensors, *plan.params)
        else:
            y1 = y2 = x
            for block in self.blocks:
                y1, y2 = block(y1, y2, **kwargs)
        return (y1 + y2) / 2
