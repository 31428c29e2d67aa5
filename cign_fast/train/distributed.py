"""Process-group setup from torchrun's environment variables, and the few collectives the trainer needs.

A plain ``python``/``cign-fast`` run (no ``WORLD_SIZE`` in the environment) is a world of one and
never touches ``torch.distributed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only rank 0 prints, writes files and shows progress bars."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(requested: str, local_rank: int) -> torch.device:
    """``"auto"`` -> this rank's GPU when CUDA is visible, else the CPU."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("run.device: 'cuda' requested but torch sees no CUDA device")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup_distributed(requested_device: str) -> DistContext:
    """Join the process group described by torchrun's RANK/WORLD_SIZE/LOCAL_RANK (NCCL on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def teardown_distributed(context: DistContext) -> None:
    if context.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over ranks (in place; returned for chaining)."""
    if context.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


T = TypeVar("T")


def broadcast_from_main(value: T, context: DistContext) -> T:
    """Rank 0's ``value`` on every rank (any picklable object; the other ranks pass a placeholder)."""
    if not context.is_distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier(context: DistContext) -> None:
    if context.is_distributed:
        dist.barrier()


def per_rank_batch_size(global_batch_size: int, context: DistContext, key: str) -> int:
    """``global / world``: the global batch stays the same when the number of processes changes."""
    if global_batch_size % context.world_size:
        raise ValueError(
            f"config {key}: the global batch size {global_batch_size} must be divisible by the "
            f"number of processes ({context.world_size})"
        )
    return global_batch_size // context.world_size
