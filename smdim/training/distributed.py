"""torchrun / DDP helpers: process group setup (gloo on CPU, nccl on GPU) and rank bookkeeping.

Launched plainly (`python -m pipeline.train`) everything is a single process with rank 0; under
`torchrun --nproc-per-node N` the RANK/WORLD_SIZE/LOCAL_RANK variables turn DDP on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from smdim.errors import SmdimError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its global rank, the world size and its torch device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and the progress bar."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when running as one of several DDP processes."""
        return self.world_size > 1

    def share(self, global_batch: int) -> tuple[int, int]:
        """This rank's rows [start, stop) of a global batch (disjoint, equal-sized slices)."""
        if global_batch % self.world_size:
            raise SmdimError(
                f"train.batch_size={global_batch} is not divisible by the {self.world_size} "
                "torchrun processes; change one of them"
            )
        n = global_batch // self.world_size
        return self.rank * n, (self.rank + 1) * n


def init_distributed(device: str) -> DistInfo:
    """Join the torchrun process group if launched by torchrun, else describe a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world_size, local_rank, local_world, device)


def all_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over all ranks (identity in a single process)."""
    if not info.enabled:
        return x
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / info.world_size


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group cleanly."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
