"""Data-parallel training under `torchrun`: the same result as one process, on several.

A stage started by `torchrun` (or re-started under it by `launch.processes > 1`, see
`relaunch`) finds `WORLD_SIZE` in its environment and trains with DistributedDataParallel:
every step's global batch is cut into equal contiguous shards, one per process, and
DDP averages the gradients. Three things make the result that of one process on the whole
batch, up to floating-point order:

- BatchNorm statistics are those of the whole batch (`GlobalBatchNorm1d`: sums all-reduced,
  differentiably, so the gradient through the statistics is the whole batch's too);
- random draws (reparameterisation noise, Gumbel noise, dropout masks) are made for the whole
  batch from the same seeded generator on every process, and each keeps its shard's rows
  (`ShardedRandomness`), so every example sees the noise it would see in one process;
- shards are equal (`shard`), so the mean of per-process means is the batch mean; a batch
  that does not divide drops its last `len % world` examples (fewer than `world`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.overrides import TorchFunctionMode

from pipeline.errors import UserError


@dataclass(frozen=True)
class World:
    """This process's place among the processes torchrun started."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def world_from_env() -> World:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK), or one process without it."""
    if "WORLD_SIZE" not in os.environ:
        return SINGLE
    return World(rank=int(os.environ["RANK"]), size=int(os.environ["WORLD_SIZE"]),
                 local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def relaunch(processes: int, stage: str, argv: list[str]) -> int | None:
    """Run this stage again under torchrun with `processes` per machine; None if not needed.

    Only when not already under torchrun: a user who starts torchrun (e.g. on several
    machines, `--nnodes`) decides the processes themselves.
    """
    if processes <= 1 or "WORLD_SIZE" in os.environ:
        return None
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={processes}", "-m", "pipeline", stage, *argv]
    print(f"launching {processes} processes: {' '.join(command[1:])}", file=sys.stderr)
    return subprocess.call(command)


def init(world: World, device: torch.device, backend: str = "auto") -> torch.device:
    """Join the process group; return this process's device (one GPU per process)."""
    if not world.distributed:
        return device
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise UserError(f"process {world.local_rank} on this machine has no GPU "
                            f"({torch.cuda.device_count()} present): start at most that many "
                            "processes per machine (launch.processes)")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=world.rank, world_size=world.size,
                                device_id=device if device.type == "cuda" else None)
    return device


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shard_bounds(n: int, world: World) -> tuple[int, int]:
    """[start, stop) of this process's contiguous, equal share of a batch of n (the
    remainder, fewer than `world.size` examples, belongs to no process)."""
    if not world.distributed:
        return 0, n
    per = n // world.size
    return world.rank * per, (world.rank + 1) * per


def shard(indices: np.ndarray, world: World) -> np.ndarray:
    """This process's share of a global batch of indices (`shard_bounds`)."""
    start, stop = shard_bounds(len(indices), world)
    return indices if (start, stop) == (0, len(indices)) else indices[start:stop]


class _SumOverProcesses(torch.autograd.Function):
    """all_reduce(SUM) with its gradient: the sum of the gradients of every process's use."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def sum_over_processes(x: torch.Tensor) -> torch.Tensor:
    return _SumOverProcesses.apply(x)


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the batch across all processes.

    torch's SyncBatchNorm serves CUDA only; this one works with any backend (gloo on CPU
    too). Two all-reduces per call (the mean, then the squared deviations: no cancellation).
    Evaluation uses the running statistics, identical on every process.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        xf = x.float()
        count = torch.full((1,), float(len(xf)), device=xf.device)  # no host copy
        total = sum_over_processes(torch.cat([xf.sum(0), count]))
        n = total[-1]
        mean = total[:-1] / n
        var = sum_over_processes(((xf - mean) ** 2).sum(0)) / n
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
            self.num_batches_tracked.add_(1)
        out = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        return out.to(x.dtype)


def global_batchnorm(module: nn.Module) -> nn.Module:
    """Turn every BatchNorm1d in `module` into a GlobalBatchNorm1d, in place (same state)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm1d:
            if not child.track_running_stats or child.momentum is None:
                raise ValueError(f"{name}: only BatchNorm1d with running stats and a momentum")
            # The same parameter and buffer objects: an optimizer holding them stays valid.
            replacement = GlobalBatchNorm1d.__new__(GlobalBatchNorm1d)
            replacement.__dict__ = child.__dict__
            setattr(module, name, replacement)
        else:
            global_batchnorm(child)
    return module


class ShardedRandomness(TorchFunctionMode):
    """Draw random numbers for the whole batch; keep this process's rows.

    Inside this mode every per-example random draw (first dimension = this process's shard)
    is made `world` times as large from the generator, which has the same state on every
    process, and this process keeps rows `[rank * n, (rank + 1) * n)`: the rows one process
    on the whole batch would have given these examples. Covers what the models draw:
    `Tensor.normal_` (torch.distributions' rsample), `torch.rand` (Gumbel-softmax) and
    dropout. Anything else random raises, rather than silently differing.
    """

    _UNSUPPORTED: ClassVar[frozenset] = frozenset({
        torch.randn, torch.randint, torch.bernoulli, torch.normal, torch.Tensor.uniform_,
        torch.Tensor.bernoulli_, torch.Tensor.exponential_, torch.multinomial, torch.randperm})

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world

    def _rows(self, whole: torch.Tensor, n: int) -> torch.Tensor:
        return whole[self.world.rank * n:(self.world.rank + 1) * n]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.normal_:
            target = args[0]
            whole = torch.empty((self.world.size * target.shape[0], *target.shape[1:]),
                                dtype=target.dtype, device=target.device)
            whole.normal_(*args[1:], **kwargs)
            with torch.no_grad():
                return target.copy_(self._rows(whole, target.shape[0]))
        if func is torch.rand:
            shape = args[0] if len(args) == 1 and not isinstance(args[0], int) else args
            shape = tuple(shape)
            whole = torch.rand((self.world.size * shape[0], *shape[1:]), **kwargs)
            return self._rows(whole, shape[0])
        if func is nn.functional.dropout:
            x = args[0]
            p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
            training = kwargs.get("training", args[2] if len(args) > 2 else True)
            if not training or p == 0:
                return x
            mask = torch.empty((self.world.size * x.shape[0], *x.shape[1:]), dtype=x.dtype,
                               device=x.device).bernoulli_(1 - p)
            return x * self._rows(mask, x.shape[0]) / (1 - p)
        if func in self._UNSUPPORTED:
            raise NotImplementedError(f"{func.__name__}: a random draw ShardedRandomness does "
                                      "not split by examples; add it there")
        return func(*args, **kwargs)
