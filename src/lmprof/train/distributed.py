"""Process-group setup for runs launched by torchrun (NCCL on CUDA, gloo on the CPU)."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lmprof.config import RunConfig


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(cfg: RunConfig, local_rank: int = 0) -> torch.device:
    want = cfg.system.device
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def init_distributed(cfg: RunConfig) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(minutes=30),
            device_id=device if device.type == "cuda" else None,
        )
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=device)


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum host floats over ranks (one collective); identity on one process."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_count(n: int, info: DistInfo) -> torch.Tensor | int:
    """An integer the host knows, summed over ranks on the device: one int64 all-reduce,
    queued behind the step's work and never read back (nothing waits); `n` on one process."""
    if not info.enabled:
        return n
    t = torch.tensor([n], dtype=torch.int64)
    if info.device.type == "cuda":
        t = t.pin_memory()  # a non-blocking copy needs page-locked memory
    t = t.to(info.device, non_blocking=True)
    dist.all_reduce(t)
    return t[0]


def shutdown(clean: bool = True) -> None:
    """Tear the process group down; after a clean run, only once every rank is done with it
    (a gloo peer that leaves while another still talks to it aborts that process)."""
    if dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
