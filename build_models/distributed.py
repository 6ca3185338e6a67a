"""Training on several processes: ``segedge-build train`` under ``torchrun`` (DDP; gloo on
CPU, NCCL on GPUs). Outside torchrun (no ``WORLD_SIZE`` > 1) everything here is a no-op.

Every process holds the data and the same model; each trains on its own share of every
epoch's shuffled order (batch ``--batch-size`` per process), gradients are averaged by
DDP, and the learning-rate progress and the stop decision are agreed on every step so
that no process runs ahead. Rank 0 alone validates and writes checkpoints and reports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None  # None: a single process

    @property
    def on(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def to_dict(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend}


def device_of(requested: str, local_rank: int) -> torch.device:
    """``auto``: CUDA when there is one; under torchrun each process its LOCAL_RANK's GPU."""
    import torch

    kind = requested if requested != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(kind)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def start(requested_device: str) -> tuple:
    """(Dist, device) for this process: joins torchrun's process group when there is one."""
    import torch.distributed as td

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = device_of(requested_device, local_rank if world > 1 else 0)
    if world <= 1:
        return Dist(), device
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not td.is_initialized():
        td.init_process_group(backend=backend)
    return Dist(td.get_rank(), td.get_world_size(), local_rank, backend), device


def agree_max(dist: Dist, values: List[float], device: torch.device) -> List[float]:
    """The maximum of ``values`` over all processes (unchanged on one)."""
    if not dist.on:
        return values
    import torch
    import torch.distributed as td

    t = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32,
                     device=device)
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return [float(v) for v in t.tolist()]


def barrier(dist: Dist) -> None:
    if dist.on:
        import torch.distributed as td

        td.barrier()


def stop(dist: Dist) -> None:
    if dist.on:
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()
