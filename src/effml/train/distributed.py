"""PyTorch DDP under torchrun: process group, device, rank; a no-op for a single process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from effml.errors import EffmlError
from effml.layers.norm import convert_sync_batchnorm


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, the world size and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on the one process that writes files and prints."""
        return self.rank == 0


def setup(device: str = "auto") -> DistContext:
    """Initialise the process group when started by torchrun (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # CUDA is queried only when it may be used: train.device=cpu never touches it
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise EffmlError("train.device=cuda but no CUDA device is available; use train.device=cpu")
    if world == 1:
        return DistContext(0, 1, torch.device("cuda" if use_cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistContext(dist.get_rank(), dist.get_world_size(), dev)


def wrap(model: nn.Module, ctx: DistContext, sync_bn: bool) -> nn.Module:
    """DDP-wrap ``model`` when there are several processes (optionally with SyncBatchNorm)."""
    if ctx.world == 1:
        return model
    if sync_bn:
        if ctx.device.type != "cuda":
            raise EffmlError("train.sync_bn needs CUDA (torch's SyncBatchNorm has no CPU kernel); "
                             "set train.sync_bn=false or model.freeze_bn=true on CPU")
        model = convert_sync_batchnorm(model)
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # a model whose steps leave some parameters unused (a supernet's shallow children) says so
    unused = bool(getattr(model, "ddp_find_unused_parameters", False))
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def ranks_agree(model: nn.Module) -> bool:
    """True when every process holds the same parameters (compared by a float64 fingerprint)."""
    if not (dist.is_available() and dist.is_initialized()):
        return True
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
    fingerprint = torch.stack([flat.sum(), (flat * flat).sum(), (flat * weights).sum()])
    gathered = [torch.empty_like(fingerprint) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, fingerprint)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def barrier() -> None:
    """Wait for every process (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    """Destroy the process group if this run created one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
