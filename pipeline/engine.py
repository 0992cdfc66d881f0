"""The one training engine: what every gradient trainer shares around its own step.

A trainer (the VAEs' `vae.training.fit`, VGG16's `features.finetune`) supplies its model, its
optimiser and `run_epoch(epoch) -> {term: mean}`, which draws its batches and takes its steps.
The engine owns the rest: the epoch loop and its progress bar, the non-finite-loss error,
the learning curves (DVCLive, `Curves`), and the resumable checkpoint:

- format: {"epoch", "model", "optimizer", "torch_rng", "cuda_rng", "numpy_rng", "history",
  "fingerprint"}, written atomically (`pipeline.atomic`);
- resume: a checkpoint whose fingerprint equals the run's and whose epoch is not past the
  run's last resumes after that epoch, bit-identically on a CPU (the RNG states come back);
  one of other parameters is ignored (and overwritten); an unreadable one (truncated, empty,
  foreign) is deleted with a one-line message and training starts afresh;
- cadence: the first save once `every` epochs have passed; then whenever `every` more have
  and the training time since the last save is at least 20 times what that save took, so
  that checkpoints cost at most 5 % of the training time on any disk (docs/scale.md); never
  after the last epoch (the trainer's final output replaces it). A resume loses at most
  that interval.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.atomic import torch_save
from pipeline.distributed import SINGLE, World
from pipeline.errors import UserError

log = logging.getLogger(__name__)
SAVE_BUDGET = 0.05  # the largest share of training time checkpoints may take
SLOW_HOURS = 1.0  # a CPU run estimated longer than this says so after its first epoch


def adam(model: nn.Module, lr: float) -> torch.optim.Adam:
    """Every trainer's Adam: torch's fused kernel (one pass over every parameter), on CUDA
    and on the CPU.

    On the CPU torch's default Adam makes new tensors per parameter (sqrt, division): at the
    paper's sizes (SS-HMVAE-kl, 49M parameters, one thread, AMD EPYC) a step of it took
    269 ms against 39 ms fused, a sixth of a 1.35 s training step. The fused kernel rounds
    differently (the same formula in another order): fixed-seed CPU results moved with it.
    """
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; the message names the epoch and the terms."""


@dataclass
class Checkpoint:
    """Where a run's resumable state lives and what it must match to be resumed."""

    path: Path
    fingerprint: dict[str, Any]
    every: int = 1  # epochs between saves at least (the time budget may space them more)
    _last_cost: float | None = field(default=None, repr=False)  # seconds the last save took
    _last_done: float = field(default=0.0, repr=False)  # when it ended (perf_counter)
    _last_epoch: int = field(default=0, repr=False)

    def due(self, done: int, epochs: int) -> bool:
        if done >= epochs or done - self._last_epoch < self.every:
            return False
        spent = time.perf_counter() - self._last_done
        return self._last_cost is None or spent * SAVE_BUDGET >= self._last_cost

    def save(self, done: int, state: dict[str, Any]) -> None:
        started = time.perf_counter()
        torch_save({"epoch": done, **state, "fingerprint": self.fingerprint}, self.path)
        self._last_done = time.perf_counter()
        self._last_cost, self._last_epoch = self._last_done - started, done

    def load(self, epochs: int, *, loud: bool = True) -> dict[str, Any] | None:
        """The saved state if it belongs to this run; None (starting afresh) otherwise."""
        state = load_or_discard(self.path)
        if state is None:
            return None
        if state.get("fingerprint") != self.fingerprint or state.get("epoch", 0) > epochs:
            if loud:
                tqdm.write(f"{self.path}: written for other parameters or data; starting afresh")
            return None
        self._last_epoch = int(state["epoch"])
        if loud:
            tqdm.write(f"{self.path}: resuming after epoch {state['epoch']}")
        return state


def load_or_discard(path: Path, *, mmap: bool = False) -> dict[str, Any] | None:
    """A file this project wrote with torch.save, or None; an unreadable one (truncated,
    empty, foreign bytes) is deleted with a one-line message, so the stage starts afresh
    instead of failing on every rerun."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        if not isinstance(saved, dict):
            raise TypeError(f"holds a {type(saved).__name__}, not a dict")
    except Exception as err:  # torch raises many types for a damaged or foreign file
        # the first sentence: torch's messages run on with advice that does not apply here
        first = str(err).strip().splitlines()[0].split(". ")[0][:160] if str(err).strip() else ""
        reason = f"{type(err).__name__}: {first}" if first else type(err).__name__
        log.warning("%s: unreadable (%s); deleting it and starting afresh", path, reason)
        path.unlink(missing_ok=True)
        return None
    return saved


class Curves:
    """Per-epoch metrics through DVCLive, in a folder the stage owns (dvc.yaml untouched)."""

    def __init__(self, folder: Path, *, resume: bool) -> None:
        from dvclive import Live  # imported late: it pulls in much of DVC

        self._live = Live(str(folder), resume=resume, dvcyaml=None, save_dvc_exp=False,
                          report=None)

    def log(self, step: int, values: dict[str, float]) -> None:
        self._live.step = step
        for name, value in values.items():
            self._live.log_metric(name, value)
        self._live.next_step()

    def summary(self, values: dict[str, float]) -> None:
        self._live.summary.update(values)

    def close(self) -> None:
        self._live.end()


def train(model: nn.Module, optimizer: torch.optim.Optimizer,
          run_epoch: Callable[[int], dict[str, float]], *, epochs: int,
          checkpoint: Checkpoint | None = None, rng: np.random.Generator | None = None,
          curves: Path | None = None, evaluate: Callable[[], dict[str, float]] | None = None,
          hint: str = "", desc: str = "epochs", progress: bool = True,
          world: World = SINGLE) -> list[dict[str, float]]:
    """Train `model` from `checkpoint` (if resumable) to `epochs`; per-epoch means.

    `rng`: the trainer's own numpy generator, saved and restored with the torch ones.
    `curves`: a DVCLive folder (main process only) receiving `train/<term>` and, with
    `evaluate`, its values each epoch; evaluation draws none of the training's random numbers.
    `hint`: what the non-finite-loss error suggests. Under torchrun only the main process
    writes the checkpoint and the curves.
    """
    history: list[dict[str, float]] = []
    start = 0
    state = checkpoint.load(epochs, loud=world.is_main) if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if rng is not None:
            rng.bit_generator.state = state["numpy_rng"]
        history, start = list(state["history"]), int(state["epoch"])
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    live = Curves(curves, resume=start > 0) if curves is not None and world.is_main else None
    bar = tqdm(range(start, epochs), desc=desc, disable=not progress or not world.is_main,
               initial=start, total=epochs, leave=False, unit="epoch")
    with contextlib.closing(bar), _closing(live):
        for epoch in bar:
            began = time.perf_counter()
            means = run_epoch(epoch)
            if epoch == start and not cuda and world.is_main:
                _warn_if_slow(desc, time.perf_counter() - began, epochs - start - 1)
            _check_finite(epoch, means, hint)
            history.append(means)
            bar.set_postfix(loss=f"{means['loss']:.4g}")
            if live is not None:
                values = {f"train/{name}": value for name, value in means.items()}
                if evaluate is not None:
                    with torch.random.fork_rng(devices=[device] if cuda else []):
                        values |= evaluate()  # must not move the training's RNG
                live.log(epoch, values)
            if checkpoint is not None and world.is_main and checkpoint.due(epoch + 1, epochs):
                checkpoint.save(epoch + 1, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if cuda else [],
                    "numpy_rng": rng.bit_generator.state if rng is not None else {},
                    "history": history})
    return history


@contextlib.contextmanager
def _closing(live: Curves | None) -> Iterator[None]:
    try:
        yield
    finally:
        if live is not None:
            live.close()


def _warn_if_slow(desc: str, seconds: float, left: int) -> None:
    """One line, after the first epoch, when a CPU run will take hours (issue: say so early,
    not after hours; docs/scale.md has the measured sizes)."""
    hours = seconds * left / 3600
    if hours > SLOW_HOURS:
        log.warning("%s on the CPU: about %.1f h for the %d epochs left (%.0f s for the first); "
                    "a GPU is advised (docs/scale.md)", desc, hours, left, seconds)


def _check_finite(epoch: int, means: dict[str, float], hint: str) -> None:
    bad = sorted(name for name, value in means.items() if not math.isfinite(value))
    if bad:
        raise NonFiniteLossError(
            f"the loss became non-finite in epoch {epoch + 1} (terms: {', '.join(bad)})"
            + (f"; {hint}" if hint else ""))
