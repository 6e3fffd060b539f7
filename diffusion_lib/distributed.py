"""Multi-process training (torchrun): which part of each batch a process trains on, and the process group.

Every rank draws the randomness of the whole global batch from the same seeded generator and
keeps its slice (:func:`shard`), so that a run's batches do not depend on the number of
processes; ``DistributedDataParallel`` averages the gradients. Backends: nccl on CUDA, gloo on
the CPU (:func:`~diffusion_lib.device.distributed_backend`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .device import distributed_backend, resolve_device


class DistributedError(RuntimeError):
    """A multi-process job that cannot start as asked; the message says why."""


def shard(n: int, rank: int, world_size: int) -> slice:
    """The part of a global batch of ``n`` examples that ``rank`` trains on (near-equal, disjoint)."""
    return slice(rank * n // world_size, (rank + 1) * n // world_size)


@dataclass
class Distributed:
    """This process's place in a (possibly single-process) training job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_name: str) -> "Distributed":
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), False)
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
        try:
            device_type = resolve_device(device_name, local_rank).type
            backend = distributed_backend(device_type)  # refuses MPS with a clear message
        except ValueError as err:
            raise DistributedError(str(err)) from err
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        return cls(rank, world_size, local_rank, True)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
