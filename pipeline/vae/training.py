"""The VAEs' batches and step under the training engine: eq. (3)'s labelled and unlabelled
batches per step.

An epoch is one pass over the unlabelled examples in batches of `batch_size`; each step
also draws `labeled_batch_size` labelled examples from a stream of reshuffled passes over
the (much smaller) labelled set. Adam, seeded. The epoch loop, the checkpoint and resume,
the non-finite-loss error, the curves and the progress bar are `pipeline.engine`'s.

Speed (docs/scale.md): the data stay on the training device, an epoch's batch indices are
copied there at once, the loss terms stay there until the epoch ends (no host
synchronisation per step), Adam is fused on CUDA, and the loss can be `torch.compile`d.
Under torchrun (`world`) the model is wrapped in DistributedDataParallel;
`pipeline.distributed` makes the result that of one process on the whole batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipeline import distributed, engine
from pipeline.config import TrainConfig
from pipeline.devices import autocast_dtype
from pipeline.distributed import SINGLE, World
from pipeline.errors import UserError
from pipeline.vae.data import TrialData
from pipeline.vae.modes import unchecked_distributions
from pipeline.vae.objective import Batch

HINT = "try a lower train.lr, train.grad_clip > 0, or train.precision=fp32"


def compiled(cfg: TrainConfig, device: torch.device) -> bool:
    """train.compile: `auto` compiles on CUDA only."""
    return cfg.compile == "always" or (cfg.compile == "auto" and device.type == "cuda")


def epoch_batches(rng: np.random.Generator, n_unlabelled: int, n_labelled: int,
                  cfg: TrainConfig) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Index pairs (labelled, unlabelled) for one epoch, drawn from `rng`."""
    order = rng.permutation(n_unlabelled)
    bounds = [*range(0, n_unlabelled, cfg.batch_size), n_unlabelled]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 2:
        del bounds[-2]  # batch normalisation needs two examples: fold a lone one back in
    steps = len(bounds) - 1
    per_step = min(cfg.labeled_batch_size, n_labelled)
    passes = -(-steps * per_step // n_labelled)
    stream = np.concatenate([rng.permutation(n_labelled) for _ in range(passes)])
    for i in range(steps):
        yield stream[i * per_step:(i + 1) * per_step], order[bounds[i]:bounds[i + 1]]


def _take(batch: Batch, idx: torch.Tensor) -> Batch:
    x = {m: t.index_select(0, idx) for m, t in batch.x.items()}
    return Batch(x, None if batch.y is None else batch.y.index_select(0, idx))


class LossModule(nn.Module):
    """`model.loss` as a forward pass: what DistributedDataParallel and compile wrap."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, labelled: Batch, unlabelled: Batch) -> tuple[torch.Tensor, dict]:
        return self.model.loss(labelled, unlabelled)


def _epoch_indices(rng: np.random.Generator, n_u: int, n_l: int, cfg: TrainConfig,
                   world: World, device: torch.device
                   ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This process's (labelled, unlabelled) index batches of one epoch, on `device`,
    copied in one transfer; a step whose shard would be empty is left out (on every
    process alike: the sizes are global)."""
    pairs = [(distributed.shard(l_idx, world), distributed.shard(u_idx, world))
             for l_idx, u_idx in epoch_batches(rng, n_u, n_l, cfg)]
    pairs = [(l_idx, u_idx) for l_idx, u_idx in pairs if len(l_idx) and len(u_idx)]
    sizes = [len(i) for pair in pairs for i in pair]
    flat = torch.from_numpy(np.concatenate([i for pair in pairs for i in pair])).to(device)
    parts = flat.split(sizes)
    return list(zip(parts[0::2], parts[1::2], strict=True))


def train_step(loss_fn: nn.Module, optimizer: torch.optim.Optimizer, labelled: Batch,
               unlabelled: Batch, *, dtype: torch.dtype | None, grad_clip: float = 0.0
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step of eq. (3) (`loss_fn`: a `LossModule`, compiled or under DDP)."""
    device = next(iter(labelled.x.values())).device
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        loss, terms = loss_fn(labelled, unlabelled)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(loss_fn.parameters(), grad_clip)
    optimizer.step()
    return loss, terms


def fit(model: nn.Module, data: TrialData, cfg: TrainConfig, *,
        checkpoint: engine.Checkpoint | None = None, curves: Path | None = None,
        evaluate: Callable[[], dict[str, float]] | None = None, progress: bool = True,
        world: World = SINGLE, desc: str = "train") -> list[dict[str, float]]:
    """Train `model` in place for `cfg.epochs` (resuming from `checkpoint` when it belongs to
    this run); return per-epoch mean loss terms. `curves`, `evaluate`: `engine.train`'s.

    Under torchrun (`world` with several processes, the process group initialised) every
    process trains its shard of each batch; only the main process writes.
    """
    n_l, n_u = len(data.labelled), len(data.unlabelled)
    if n_l < 1 or n_u < 2:
        raise UserError(f"training needs at least 1 labelled and 2 unlabelled examples, "
                        f"got {n_l} and {n_u}")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = next(model.parameters()).device
    if world.distributed:
        distributed.global_batchnorm(model)
    optimizer = engine.adam(model, cfg.lr)
    dtype = autocast_dtype(cfg.precision, device)
    loss_fn: nn.Module = LossModule(model)
    randomness: Callable[[], Any] = contextlib.nullcontext
    if world.distributed:
        loss_fn = DistributedDataParallel(
            loss_fn, device_ids=[device] if device.type == "cuda" else None,
            broadcast_buffers=False)  # GlobalBatchNorm1d keeps the buffers equal
        randomness = lambda: distributed.ShardedRandomness(world)  # noqa: E731
    elif compiled(cfg, device):
        loss_fn = torch.compile(loss_fn)
    eager = loss_fn if not compiled(cfg, device) or world.distributed else LossModule(model)

    def step(labelled: Batch, unlabelled: Batch) -> tuple[torch.Tensor, dict]:
        nonlocal loss_fn
        try:
            with randomness():
                return train_step(loss_fn, optimizer, labelled, unlabelled, dtype=dtype,
                                  grad_clip=cfg.grad_clip)
        except torch._dynamo.exc.TorchDynamoException as err:
            if loss_fn is eager:
                raise
            # Compiling happens in the first step's forward and backward, before any
            # weight changes: go on in eager mode (the same in distribution).
            tqdm.write(f"torch.compile failed ({type(err).__name__}: {str(err)[:300]}); "
                       "training in eager mode (train.compile: never skips the attempt)")
            loss_fn = eager
            return train_step(loss_fn, optimizer, labelled, unlabelled, dtype=dtype,
                              grad_clip=cfg.grad_clip)

    def run_epoch(epoch: int) -> dict[str, float]:
        sums: dict[str, torch.Tensor] = {}
        steps = 0
        for l_idx, u_idx in _epoch_indices(rng, n_u, n_l, cfg, world, device):
            loss, terms = step(_take(data.labelled, l_idx), _take(data.unlabelled, u_idx))
            for name, value in {"loss": loss.detach(), **terms}.items():
                sums[name] = sums.get(name, 0.0) + value.float()
            steps += 1
        return _epoch_means(sums, steps, world)

    model.train()
    with unchecked_distributions():
        return engine.train(model, optimizer, run_epoch, epochs=cfg.epochs,
                            checkpoint=checkpoint, rng=rng, curves=curves, evaluate=evaluate,
                            hint=HINT, desc=desc, progress=progress, world=world)


def _epoch_means(sums: dict[str, torch.Tensor], steps: int, world: World) -> dict[str, float]:
    """Per-step means of the loss terms, over every process's shards (one transfer)."""
    names = sorted(sums)
    totals = torch.stack([sums[name] for name in names])
    if world.distributed:
        torch.distributed.all_reduce(totals)
        totals = totals / world.size
    return {name: value / steps for name, value in zip(names, totals.tolist(), strict=True)}
