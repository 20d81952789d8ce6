"""Helpers for one run on several processes (``torchrun``), no-ops in a single process.

The trainer calls these unconditionally, so the same code path runs locally, under
``torchrun --nproc_per_node N`` (DistributedDataParallel; NCCL on GPUs, gloo on CPU) and on a
cluster. Only rank 0 writes files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group is initialised (i.e. under torchrun after :func:`init`)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def init(device: str = "cpu") -> str:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE`` > 1).

    Returns the device this rank should use: ``cuda:<LOCAL_RANK>`` for a CUDA ``device``,
    otherwise ``device`` unchanged. Backend: NCCL for CUDA, gloo for CPU.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return device
    cuda = str(device).startswith("cuda")
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when distributed, else ``model`` itself."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.device(device).index] if str(device).startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks (in place, returned); identity in one process."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if is_distributed():
        dist.barrier()
