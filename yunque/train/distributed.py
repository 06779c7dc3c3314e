"""Where a run's processes sit: one process, or data parallel under `torchrun` (gloo on CPU, nccl on
CUDA). `join` places this process; `leave` takes it out of the group cleanly."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from yunque.model.device import device_kind


@dataclass(frozen=True)
class Placement:
    """This process's rank among `world` processes, and the device it trains on."""

    rank: int
    local_rank: int
    world: int
    device: torch.device

    @property
    def lead(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics and the final model, and reports progress."""
        return self.rank == 0


def launched_rank() -> int:
    """The rank torchrun gave this process (0 when run alone), readable before joining the group."""
    return int(os.environ.get("RANK", "0"))


def join(device: str) -> Placement:
    """Join the process group when launched by torchrun and pick this rank's device ("auto", "cpu", "cuda")."""
    kind = device_kind(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = 0, 0
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
        rank, local_rank = dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
        return Placement(rank, local_rank, world, torch.device("cuda", local_rank))
    return Placement(rank, local_rank, world, torch.device("cpu"))


def leave(place: Placement, finished: bool) -> None:
    """Leave the process group: all ranks together after a finished run, then free the group.

    A rank that tears gloo down while rank 0 is still writing the final model makes gloo abort
    the process ("terminate called without an active exception"), hence the barrier; and the DDP
    wrapper (its reducer holds gloo work objects) is freed while the interpreter is whole, since
    left to interpreter shutdown gloo can abort the process the same way.
    """
    if place.world == 1:
        return
    if finished:
        dist.barrier()
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def all_reduce_(values: torch.Tensor, place: Placement) -> torch.Tensor:
    """Sum `values` over all ranks in place (a no-op alone) and return it."""
    if place.world > 1:
        dist.all_reduce(values)
    return values
