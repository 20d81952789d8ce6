"""Helpers for one run on several processes (``torchrun``), no-ops in a single process.

The trainer calls these unconditionally, so the same code path runs locally, under
``torchrun --nproc_per_node N`` (DistributedDataParallel; NCCL on GPUs, gloo on CPU) and on a
cluster. Only rank 0 writes files.

Batch norm: under DDP each rank would normalise with its own slice of the batch, so W processes
would not train the model one process trains. :func:`wrap_model` therefore synchronises batch-norm
statistics across ranks (torch's ``SyncBatchNorm`` on CUDA, :class:`GlooSyncBatchNorm` on CPU).

In one process everything is the identity:

>>> model = torch.nn.Linear(2, 1)
>>> wrap_model(model, "cpu") is model, world_size(), is_main_process()
(True, 1, True)
>>> all_reduce_sum(torch.tensor([1.0, 2.0]))
tensor([1., 2.])
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


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
    """Destroy the process group (and the batch-norm group made by :func:`wrap_model`)."""
    if is_distributed():
        dist.destroy_process_group()
    GlooSyncBatchNorm._group = None


def wrap_model(model: torch.nn.Module, device: str, *, sync_batchnorm: bool = True
               ) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when distributed, else ``model`` itself.

    With ``sync_batchnorm`` (default) the batch-norm layers first become synchronised ones, so
    their training statistics cover the global batch, not each rank's slice: one run on W
    processes then computes what one process computes on the whole batch (up to float rounding).
    CUDA uses torch's ``SyncBatchNorm``; CPU (gloo), which torch's does not support, uses
    :class:`GlooSyncBatchNorm`. Parameters stay the same objects (an optimizer built on ``model``
    stays valid) and state-dict keys are unchanged.
    """
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    cuda = str(device).startswith("cuda")
    if sync_batchnorm:
        model = (torch.nn.SyncBatchNorm.convert_sync_batchnorm(model) if cuda
                 else convert_gloo_sync_batchnorm(model))
    ids = [torch.device(device).index] if cuda else None
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


class _SumOverRanks(torch.autograd.Function):
    """Differentiable all-reduce (sum): y = sum_r x_r on every rank, so dL/dx_r = sum_r' dL_r'/dy
    (the gradient of the sum of all ranks' losses, which DDP then averages)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


class GlooSyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics span every rank, for CPU process groups (gloo).

    torch's ``SyncBatchNorm`` refuses CPU modules under DDP. This one computes, per channel, the
    global mean and then the global biased variance with two differentiable all-reduces (sums and
    counts over ranks), so forward and backward equal those of ``BatchNorm`` on the concatenated
    batch; running statistics use the unbiased global variance as torch does. Outside training,
    or in one process, it is plain batch norm. Inputs: (N, C) or (N, C, *).
    """

    _group = None  # process group of its own, so its collectives never interleave with DDP's

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected input of shape (N, C, ...), got {tuple(input.shape)}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, input.shape[1]] + [1] * (input.dim() - 2)
        count = torch.tensor(float(input.numel() // input.shape[1]), dtype=input.dtype,
                             device=input.device)
        dist.all_reduce(count, group=self._group)  # global number of values per channel
        mean = _SumOverRanks.apply(input.sum(dims), self._group) / count  # (C,)
        centred = input - mean.view(shape)
        var = _SumOverRanks.apply((centred * centred).sum(dims), self._group) / count  # (C,)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                          else self.momentum)
                unbiased = var * (count / (count - 1)) if count > 1 else var
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(unbiased.detach(), factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_gloo_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every batch-norm layer of ``module`` by :class:`GlooSyncBatchNorm` (in place for
    children; the new root is returned), keeping its parameter and buffer objects."""
    if GlooSyncBatchNorm._group is None and is_distributed():
        # Created once, by every rank in the same order (wrap_model runs on all ranks).
        GlooSyncBatchNorm._group = dist.new_group(backend="gloo")
    if isinstance(module, _BatchNorm) and not isinstance(module, GlooSyncBatchNorm | nn.SyncBatchNorm):
        new = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_gloo_sync_batchnorm(child))
    return module
