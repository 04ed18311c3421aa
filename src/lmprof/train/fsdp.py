"""FSDP2 (`torch.distributed.fsdp.fully_shard`): parameters, gradients and optimizer state
sharded over the ranks, each Transformer block gathered just before it runs.

Mixed precision is FSDP's job here, not autocast's: with bf16/fp16 the gathered parameters are
cast to that dtype for compute (MixedPrecisionPolicy.param_dtype) while the sharded master
weights, the optimizer state and the gradient reduce-scatter stay fp32 (reduce_dtype). The
trainer then runs the forward without torch.autocast.

One process (parallelism=fsdp under `torchrun --nproc_per_node 1`, or a plain `lmprof run`)
also works: FSDP needs a process group, so a one-rank group is made here. That measures FSDP's
own overhead (all-gather and reduce-scatter of a one-rank mesh, copies) against no wrapper.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from lmprof.precision import autocast_dtype
from lmprof.train.distributed import DistInfo


def ensure_process_group(info: DistInfo) -> None:
    """A process group for FSDP; init_distributed makes one only for several processes."""
    if dist.is_initialized():
        return
    if info.device.type == "cuda":
        # NCCL for the shards, gloo beside it for DCP's and the checkpoint flag's CPU traffic.
        dist.init_process_group(
            "cpu:gloo,cuda:nccl",
            store=dist.HashStore(),
            rank=0,
            world_size=1,
            device_id=info.device,
        )
    else:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


def mixed_precision_policy(precision: str):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    dtype = autocast_dtype(precision)
    if dtype is None:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def shard_model(model: nn.Module, info: DistInfo, precision: str) -> nn.Module:
    """fully_shard each block, then the root (embeddings, final norm, tied head); in place,
    so build the optimizer from the model afterwards (its parameters are now DTensors)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    ensure_process_group(info)
    mesh = init_device_mesh(info.device.type, (dist.get_world_size(),))
    mp = mixed_precision_policy(precision)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """Gradient accumulation: no reduce-scatter on non-final micro-steps (FSDP2's no_sync)."""
    model.set_requires_gradient_sync(sync)  # type: ignore[operator]
