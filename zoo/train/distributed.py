"""torchrun integration: process group (gloo on CPU, nccl on CUDA), DDP / FSDP wrapping, rank-0 helpers."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from zoo.errors import ConfigError


@dataclass
class DistInfo:
    """This process's place in a torchrun job: ``rank``, ``local_rank``, ``world_size`` and the ``backend``
    (``gloo`` on CPU, ``nccl`` on CUDA); a single process is rank 0 of 1.
    """
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None
    owns_group: bool = False  # we created the process group, so we destroy it

    @property
    def enabled(self) -> bool:
        """Whether more than one process trains (collectives are needed)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes logs, checkpoints and the final model."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether torchrun started this process (``RANK`` and ``WORLD_SIZE`` are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(use_cuda: bool) -> DistInfo:
    """Join the torchrun process group (env:// rendezvous) when launched under torchrun."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size(),
                        dist.get_backend(), owns_group=False)
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistInfo()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank, local_rank, world, backend, owns_group=True)


def cleanup(info: DistInfo) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.enabled:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    """rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj, info: DistInfo) -> list:
    """``obj`` of every rank, as a list indexed by rank (``[obj]`` in a single process)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def mean_across_ranks(values: list[float], info: DistInfo, device) -> list[float]:
    """Element-wise mean of ``values`` over all ranks (float64 all-reduce); unchanged in a single process."""
    if not info.enabled or not values:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return (tensor / info.world_size).tolist()


def any_across_ranks(flag: bool, info: DistInfo, device) -> bool:
    """True on every rank when ``flag`` is true on any rank (one all-reduce; free without torchrun)."""
    if not info.enabled:
        return bool(flag)
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def wrap_model(model: torch.nn.Module, info: DistInfo, device: torch.device, mode: str,
               find_unused_parameters: bool = False, *, fsdp_options: dict | None = None,
               trainer=None) -> torch.nn.Module:
    """DDP (default) or FSDP2 ``fully_shard`` per layer (``zoo.train.fsdp.shard`` with ``train.fsdp``
    options, the trainer's ``fsdp_layer_classes`` hook) around ``model``; unchanged when not distributed.

    Raises ConfigError for a mode other than ddp or fsdp, and the errors of zoo.train.fsdp.shard.
    """
    if not info.enabled:
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index if device.index is not None else info.local_rank] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)
    if mode == "fsdp":
        from zoo.train.fsdp import shard

        return shard(model, fsdp_options, trainer)
    raise ConfigError(f"train.distributed must be 'ddp' or 'fsdp', got {mode!r}")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (the model itself otherwise)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model
