"""Data-parallel set-up for runs launched with ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous address) in each
process's environment; without them a run is a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a data-parallel run; ``world_size == 1`` for a single one."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # whether init_distributed created the process group

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) logs and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_dist_info() -> DistInfo:
    """The rank, world size and local rank that ``torchrun`` put in the environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(rank=int(os.environ["RANK"]), world_size=world,
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device_type: str) -> DistInfo:
    """Joins the process group of a ``torchrun`` launch (nccl on CUDA, gloo otherwise) unless it
    is already initialised; a no-op for a single process. On CUDA it selects the GPU
    ``LOCAL_RANK``."""
    info = env_dist_info()
    if not info.enabled:
        return info
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    if dist.is_initialized():
        return info
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo",
                            rank=info.rank, world_size=info.world_size)
    return DistInfo(info.rank, info.world_size, info.local_rank, owns_group=True)


def shutdown(info: DistInfo) -> None:
    """Leaves the process group if :func:`init_distributed` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sums ``t`` over all processes in place (a no-op for a single process) and returns it."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather(obj: Any, info: DistInfo) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` for a single process)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
