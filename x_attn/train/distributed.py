"""Data-parallel training over several processes: DistributedDataParallel, or FSDP2 with --fsdp.

``torchrun --nproc_per_node=N -m x_attn.train [--fsdp]`` starts N processes; torchrun sets
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous address, which
:func:`process_group` reads. The backend follows the device: gloo on CPU, nccl on CUDA (rank r
uses ``cuda:LOCAL_RANK``).

Conventions, chosen so that N processes take exactly the steps one process takes:

* ``--batch`` is the global batch. Every rank draws the same global batch from the same seeded
  generator and trains on its ``batch / N`` rows; DDP and FSDP2 average the gradients over the
  equal shards, which is the gradient of the mean loss over the whole batch.
* The schedule's progress (steps done, or the clock under ``--time-budget``) is rank 0's,
  broadcast before every step: all ranks use the same learning rate and stop at the same step.
* Rank 0 alone prints, shows the progress bar and writes the outputs. Periodic validation splits
  every validation batch across the ranks and sums the losses; the final evaluation, the
  checkpoint and the samples use an unsharded copy of the model on rank 0 (FSDP2's shards are
  gathered with ``get_model_state_dict(full_state_dict=True, cpu_offload=True)``), so the
  checkpoint is the ordinary safetensors + JSON folder that ``x_attn.load`` reads.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "Parallel",
    "check_launch",
    "full_state_dict",
    "launched",
    "main_process",
    "process_group",
    "rank_device",
    "unsharded",
    "wrap",
]

_LAUNCH_HINT = "torchrun --nproc_per_node=N -m x_attn.train"


@dataclass(frozen=True)
class Parallel:
    """This process's place in a run; the default is one process without a process group."""

    rank: int = 0
    world: int = 1
    fsdp: bool = False
    enabled: bool = False  # a process group is initialised and collectives run

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def kind(self) -> str | None:
        return ("fsdp" if self.fsdp else "ddp") if self.enabled else None

    def shard(self, rows: Tensor) -> Tensor:
        """This rank's rows of a batch whose size the world size divides."""
        return rows.tensor_split(self.world)[self.rank] if self.enabled else rows

    def broadcast(self, value: float) -> float:
        """Rank 0's ``value``, on every rank."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
        torch.distributed.broadcast(tensor, src=0)
        return tensor.item()

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the ranks (float64), on every rank."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()


def _collective_device() -> torch.device:
    backend = torch.distributed.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def launched() -> bool:
    """True in a process started by torchrun (or any launcher that sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def main_process() -> bool:
    """False in the processes torchrun started with a rank other than 0 (they stay quiet)."""
    return os.environ.get("RANK", "0") == "0"


def check_launch(*, fsdp: bool, batch: int) -> int:
    """The world size (1 without torchrun); ValueError for combinations that cannot work."""
    if not launched():
        if fsdp:
            raise ValueError(
                f"--fsdp shards the model over several processes; launch them with {_LAUNCH_HINT} "
                "--fsdp (or drop --fsdp)"
            )
        return 1
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        raise ValueError("this PyTorch build has no torch.distributed; run without torchrun")
    world = int(os.environ["WORLD_SIZE"])
    if batch % world:
        raise ValueError(
            f"--batch {batch} is the global batch and must be divisible by the {world} processes "
            f"torchrun started; choose a multiple of {world} or another --nproc_per_node"
        )
    return world


def rank_device(device: torch.device) -> torch.device:
    """Under torchrun, ``cuda`` becomes ``cuda:LOCAL_RANK``; CPU stays CPU."""
    if not launched() or device.type != "cuda":
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    count = torch.cuda.device_count()
    if local >= count:
        raise ValueError(
            f"--device cuda: process {local} of this node has no GPU ({count} visible); start "
            f"at most {count} processes per node (--nproc_per_node) or use --device cpu"
        )
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


@contextmanager
def process_group(device: torch.device, *, fsdp: bool = False) -> Iterator[Parallel]:
    """Under torchrun: initialise the process group (nccl for CUDA, gloo for CPU) and yield this
    rank's :class:`Parallel`, destroying the group afterwards; otherwise yield ``Parallel()``."""
    if not launched():
        yield Parallel()
        return
    dist = torch.distributed
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    try:
        yield Parallel(dist.get_rank(), dist.get_world_size(), fsdp, enabled=True)
    finally:
        dist.destroy_process_group()


def wrap(model: nn.Module, parallel: Parallel, device: torch.device) -> nn.Module:
    """``model`` (already on ``device``) under DDP, or sharded in place by FSDP2's fully_shard."""
    if not parallel.enabled:
        return model
    if not parallel.fsdp:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # A block's output can be a view (a Linear over (b, n, d) is); FSDP2 warns that an in-place
    # op on it would skip the backward all-gather. The stack never changes a block's output in
    # place (tests/test_train_distributed.py checks the gradients exactly), so the warning goes.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device.type, (parallel.world,))
    for block in _blocks(model):  # one all-gather per block, freed after its forward
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)  # the rest: embeddings, norms, logits
    return model


def _blocks(model: nn.Module) -> list[nn.Module]:
    """Each distinct attention / feed-forward block of the stack (the modules the stack calls)."""
    layers = getattr(getattr(model, "attn_layers", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        return []
    blocks: dict[int, nn.Module] = {}
    for layer in layers:
        block = getattr(layer, "block", None)
        if isinstance(block, nn.Module) and any(True for _ in block.parameters()):
            blocks.setdefault(id(block), block)
    return list(blocks.values())


def full_state_dict(model: nn.Module, parallel: Parallel) -> dict[str, Tensor]:
    """The unsharded state dict on CPU, on rank 0 (empty on the others); every rank must call it.

    Without a process group: ``model.state_dict()``.
    """
    if not parallel.enabled:
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def unsharded(model: nn.Module, parallel: Parallel) -> nn.Module | None:
    """On rank 0, a plain (unwrapped, unsharded) model with the trained weights; None elsewhere.

    Every rank must call it (FSDP2 gathers the shards). Without a process group: ``model``; under
    DDP: the module it wraps; under FSDP2: a fresh copy of the architecture holding the gathered
    weights, on the device of ``model``'s parameters.
    """
    if not parallel.enabled:
        return model
    if not parallel.fsdp:
        return model.module if parallel.is_main else None
    state = full_state_dict(model, parallel)
    if not parallel.is_main:
        return None
    from torch.distributed.fsdp import FSDPModule

    from x_attn.serialization import from_config, to_config

    config = to_config(model)  # names the FSDP subclass fully_shard made; use the original
    config["type"] = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule)).__name__
    reference = next(model.parameters())
    plain = from_config(config).to(dtype=reference.dtype)
    plain.load_state_dict(state)
    return plain.to(reference.device)
