"""One training loop for every model: eq. (3)'s labelled and unlabelled batches per step.

An epoch is one pass over the unlabelled examples in batches of `batch_size`; each step
also draws `labeled_batch_size` labelled examples from a stream of reshuffled passes over
the (much smaller) labelled set. Adam, seeded; a checkpoint after every epoch, written
atomically, from which a killed run resumes to the same result as an uninterrupted one.

Speed (docs/scale.md): the data stay on the training device, an epoch's batch indices are
copied there at once, the loss terms stay there until the epoch ends (no host
synchronisation per step), Adam is fused, and the loss can be `torch.compile`d. Under
torchrun (`world`) the model is wrapped in DistributedDataParallel; `pipeline.distributed`
makes the result that of one process on the whole batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributions import Distribution
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipeline import distributed
from pipeline.atomic import torch_save
from pipeline.distributed import SINGLE, World
from pipeline.errors import UserError
from pipeline.vae.data import TrialData
from pipeline.vae.objective import Batch


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; the message names the epoch and the terms."""


@dataclass(frozen=True)
class FitSettings:
    epochs: int
    lr: float
    batch_size: int
    labeled_batch_size: int
    seed: int
    grad_clip: float = 0.0
    precision: str = "fp32"  # "bf16": autocast to bfloat16 on the training device
    compile: bool = False  # torch.compile the loss (not under torchrun)


def autocast_dtype(precision: str) -> torch.dtype | None:
    return torch.bfloat16 if precision == "bf16" else None


def epoch_batches(rng: np.random.Generator, n_unlabelled: int, n_labelled: int,
                  settings: FitSettings) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Index pairs (labelled, unlabelled) for one epoch, drawn from `rng`."""
    order = rng.permutation(n_unlabelled)
    bounds = [*range(0, n_unlabelled, settings.batch_size), n_unlabelled]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 2:
        del bounds[-2]  # batch normalisation needs two examples: fold a lone one back in
    steps = len(bounds) - 1
    per_step = min(settings.labeled_batch_size, n_labelled)
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


@contextlib.contextmanager
def unchecked_distributions() -> Iterator[None]:
    """Skip torch.distributions' argument checks while training: each is a host sync on
    CUDA (`.all()`), and a NaN they would catch is caught at the epoch's end anyway."""
    was = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(was)


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam; on CUDA with the fused kernel (one launch for every parameter).

    torch's fused CPU Adam saves little (SS-HMVAE-kl, 58M parameters, 2-core development
    machine: 134 instead of 150 ms of a ~800 ms fp32 step, torch.profiler) and rounds
    differently; fixed-seed CPU runs keep the results they gave before
    (bench/fixed_seed_metrics.py).
    """
    device = next(model.parameters()).device
    return torch.optim.Adam(model.parameters(), lr=lr, fused=device.type == "cuda")


def _epoch_indices(rng: np.random.Generator, n_u: int, n_l: int, settings: FitSettings,
                   world: World, device: torch.device
                   ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This process's (labelled, unlabelled) index batches of one epoch, on `device`,
    copied in one transfer; a step whose shard would be empty is left out (on every
    process alike: the sizes are global)."""
    pairs = [(distributed.shard(l_idx, world), distributed.shard(u_idx, world))
             for l_idx, u_idx in epoch_batches(rng, n_u, n_l, settings)]
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


def fit(model: nn.Module, data: TrialData, settings: FitSettings, *,
        checkpoint: Path | None = None, fingerprint: dict[str, Any] | None = None,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        progress: bool = True, world: World = SINGLE) -> list[dict[str, float]]:
    """Train `model` in place; return per-epoch mean loss terms.

    With `checkpoint`, state is saved after each epoch and, if a checkpoint with the same
    `fingerprint` exists, training resumes after its last epoch. Under torchrun (`world`
    with several processes, the process group initialised) every process trains its shard
    of each batch; only the main process writes the checkpoint and calls `on_epoch`.
    """
    n_l, n_u = len(data.labelled), len(data.unlabelled)
    if n_l < 1 or n_u < 2:
        raise UserError(f"training needs at least 1 labelled and 2 unlabelled examples, "
                        f"got {n_l} and {n_u}")
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    device = next(model.parameters()).device
    if world.distributed:
        distributed.global_batchnorm(model)
    optimizer = make_optimizer(model, settings.lr)
    history: list[dict[str, float]] = []
    start = _resume(checkpoint, fingerprint, model, optimizer, rng, history, world)
    dtype = autocast_dtype(settings.precision)
    loss_fn: nn.Module = LossModule(model)
    randomness: Callable[[], Any] = contextlib.nullcontext
    if world.distributed:
        loss_fn = DistributedDataParallel(
            loss_fn, device_ids=[device] if device.type == "cuda" else None,
            broadcast_buffers=False)  # GlobalBatchNorm1d keeps the buffers equal
        randomness = lambda: distributed.ShardedRandomness(world)  # noqa: E731
    elif settings.compile:
        loss_fn = torch.compile(loss_fn)
    eager = loss_fn if not settings.compile or world.distributed else LossModule(model)
    model.train()
    bar = tqdm(range(start, settings.epochs), desc="epochs",
               disable=not progress or not world.is_main, initial=start,
               total=settings.epochs, leave=False)
    with unchecked_distributions():
        for epoch in bar:
            sums: dict[str, torch.Tensor] = {}
            steps = 0
            for l_idx, u_idx in _epoch_indices(rng, n_u, n_l, settings, world, device):
                labelled, unlabelled = _take(data.labelled, l_idx), _take(data.unlabelled, u_idx)
                try:
                    with randomness():
                        loss, terms = train_step(loss_fn, optimizer, labelled, unlabelled,
                                                 dtype=dtype, grad_clip=settings.grad_clip)
                except torch._dynamo.exc.TorchDynamoException as err:
                    if loss_fn is eager:
                        raise
                    # Compiling happens in the first step's forward and backward, before
                    # any weight changes: go on in eager mode (the same in distribution).
                    tqdm.write(f"torch.compile failed ({type(err).__name__}: "
                               f"{str(err)[:300]}); training in eager mode (train.compile: "
                               "never skips the attempt)")
                    loss_fn = eager
                    loss, terms = train_step(loss_fn, optimizer, labelled, unlabelled,
                                             dtype=dtype, grad_clip=settings.grad_clip)
                for name, value in {"loss": loss.detach(), **terms}.items():
                    sums[name] = sums.get(name, 0.0) + value.float()
                steps += 1
            means = _epoch_means(sums, steps, world)
            _check_finite(epoch, means)
            history.append(means)
            bar.set_postfix(loss=f"{means['loss']:.4g}")
            if on_epoch is not None and world.is_main:
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    on_epoch(epoch, means)  # evaluation must not move the training's RNG
            if checkpoint is not None and world.is_main:
                torch_save({"epoch": epoch + 1, "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "torch_rng": torch.get_rng_state(),
                            "cuda_rng": (torch.cuda.get_rng_state_all()
                                         if device.type == "cuda" else []),
                            "numpy_rng": rng.bit_generator.state, "history": history,
                            "fingerprint": fingerprint or {}}, checkpoint)
    bar.close()
    return history


def _epoch_means(sums: dict[str, torch.Tensor], steps: int, world: World) -> dict[str, float]:
    """Per-step means of the loss terms, over every process's shards (one transfer)."""
    names = sorted(sums)
    totals = torch.stack([sums[name] for name in names])
    if world.distributed:
        torch.distributed.all_reduce(totals)
        totals = totals / world.size
    return {name: value / steps for name, value in zip(names, totals.tolist(), strict=True)}


def _check_finite(epoch: int, means: dict[str, float]) -> None:
    bad = sorted(name for name, value in means.items() if not np.isfinite(value))
    if bad:
        raise NonFiniteLossError(
            f"the loss became non-finite in epoch {epoch + 1} (terms: {', '.join(bad)}); "
            "try a lower train.lr, train.grad_clip > 0, or train.precision=fp32")


def _resume(checkpoint: Path | None, fingerprint: dict[str, Any] | None, model: nn.Module,
            optimizer: torch.optim.Optimizer, rng: np.random.Generator,
            history: list[dict[str, float]], world: World = SINGLE) -> int:
    """Load `checkpoint` if it belongs to this run; return the first epoch to train."""
    if checkpoint is None or not checkpoint.is_file():
        return 0
    # On the CPU: RNG states must stay there; load_state_dict moves weights to the device.
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != (fingerprint or {}):
        if world.is_main:
            tqdm.write(f"{checkpoint}: written for other parameters or data; starting afresh")
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    rng.bit_generator.state = state["numpy_rng"]
    history.extend(state["history"])
    if world.is_main:
        tqdm.write(f"{checkpoint}: resuming after epoch {state['epoch']}")
    return int(state["epoch"])


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)
