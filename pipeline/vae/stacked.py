"""Several runs of one model trained at once: stacked parameters, one vmapped step.

The runs share the model (architecture and hyper-parameters) but not the data: typically
one features file per trial. A model at the paper's sizes leaves most of a GPU idle, so
`fit_stacked` stacks the runs' parameters and BatchNorm buffers along a new first dimension
(`torch.func.stack_module_state`) and computes every run's loss in one `vmap` of
`functional_call` over that dimension; the kernels are then N times larger.

Each run is trained exactly as `training.fit` would train it alone, up to the draws of
noise (independent per run, `randomness="different"`, from the same distributions):

- its own `epoch_batches` sequence from its own `np.random.default_rng(seed)`;
- no padding: runs with a different number of examples have a different number of steps
  per epoch and a different last batch, and BatchNorm must see only real examples. So at
  each step the runs are grouped by their (labelled, unlabelled) batch sizes and each group
  takes one vmapped step; a run whose epoch is over waits for the others;
- the loss backpropagated is the sum of the runs' losses, so each run's gradient is its own;
- Adam is `_StackedAdam`: torch.optim.Adam's formulas and defaults, with a step count per
  run and parameter, applied only to the runs of the group (a waiting run's moments must
  not decay); gradient clipping takes the norm over each run's own gradient;
- BatchNorm's running statistics are stacked buffers passed through `functional_call`,
  so its in-place updates land in them (written back for a group of a subset of runs).

Workaround: torch draws `Normal.rsample`'s noise with an in-place fill that vmap refuses
under randomness="different"; `vmappable_normal_noise` swaps in `torch.randn` (the same
distribution) while the step runs, so the models' code stays as it is. Memory: the stacked
parameters are a copy beside the models' own, copied back after every epoch.

Not supported: resuming. A killed stacked run starts afresh; the checkpoints written at the
end (one per run, in `fit`'s format) let a single-run `fit` with the same fingerprint see
the run as finished.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributions.normal as normal_module
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm import tqdm

from pipeline.atomic import torch_save
from pipeline.errors import UserError
from pipeline.vae.data import TrialData
from pipeline.vae.objective import Batch, Tensors
from pipeline.vae.training import (
    FitSettings,
    NonFiniteLossError,
    autocast_dtype,
    epoch_batches,
)

BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, which `fit` uses
EPS = 1e-8


class _LossCall(nn.Module):
    """`functional_call` calls `forward`; the training loop needs `loss` on plain tensors
    (vmap maps over tensors and dicts of them, not over `Batch`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, lx: Tensors, ly: torch.Tensor,
                ux: Tensors) -> tuple[torch.Tensor, Tensors]:
        return self.model.loss(Batch(lx, ly), Batch(ux))


@contextlib.contextmanager
def vmappable_normal_noise() -> Iterator[None]:
    """Let `Normal.rsample` run under `vmap(randomness="different")`.

    torch draws its noise as `torch.empty(shape).normal_()`: an in-place random fill of a
    tensor without the vmapped dimension, which vmap refuses ("Cannot ask for different
    inplace randomness on an unbatched tensor"). `torch.randn(shape)` draws the same
    standard normal and is batched by vmap, one independent draw per run.
    """
    original = normal_module._standard_normal

    def standard_normal(shape: Sequence[int], dtype: torch.dtype | None,
                        device: torch.device | str | None) -> torch.Tensor:
        return torch.randn(tuple(shape), dtype=dtype, device=device)

    normal_module._standard_normal = standard_normal
    try:
        yield
    finally:
        normal_module._standard_normal = original


class _StackedAdam:
    """Adam over stacked parameters, updating only the given runs (rows).

    Same update as torch.optim.Adam (betas (0.9, 0.999), eps 1e-8, bias correction, no
    weight decay). The step count is per run and per parameter, as torch keeps it per
    parameter: a run updates only when it took a step, and a parameter without a
    gradient is skipped, as torch skips it.
    """

    def __init__(self, params: dict[str, torch.Tensor], lr: float) -> None:
        self.lr = lr
        self.params = params
        n_runs = len(next(iter(params.values())))
        self.exp_avg = {k: torch.zeros_like(p) for k, p in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(p) for k, p in params.items()}
        self.steps = {k: np.zeros(n_runs, np.int64) for k in params}

    @torch.no_grad()
    def step(self, runs: list[int], grads: dict[str, torch.Tensor]) -> None:
        """`grads[k]` holds the gradient rows of `runs` only (as many rows as runs)."""
        beta1, beta2 = BETAS
        first = next(iter(self.params.values()))
        full = runs == list(range(len(first)))
        idx = torch.tensor(runs, device=first.device)
        # Per-run bias corrections, in float64 on the host as torch computes them; one
        # host-to-device copy per distinct step vector (all parameters share one, usually).
        corrections: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        for k, grad in grads.items():
            p, m, v = self.params[k], self.exp_avg[k], self.exp_avg_sq[k]
            if not full:
                p, m, v = p.index_select(0, idx), m.index_select(0, idx), v.index_select(0, idx)
            self.steps[k][runs] += 1
            key = tuple(self.steps[k][runs].tolist())
            if key not in corrections:
                step = np.array(key, np.float64)
                both = torch.tensor(np.stack([self.lr / (1 - beta1 ** step),
                                              np.sqrt(1 - beta2 ** step)]),
                                    dtype=p.dtype).to(p.device)
                corrections[key] = (both[0], both[1])
            shape = (-1,) + (1,) * (p.dim() - 1)
            step_size, bias2_sqrt = (c.view(shape) for c in corrections[key])
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = v.sqrt().div_(bias2_sqrt).add_(EPS)
            p.addcdiv_(m * step_size, denom, value=-1.0)
            if not full:
                self.params[k].index_copy_(0, idx, p)
                self.exp_avg[k].index_copy_(0, idx, m)
                self.exp_avg_sq[k].index_copy_(0, idx, v)

    def state_dict_of(self, run: int, model: nn.Module, optimizer: torch.optim.Adam) -> dict:
        """Run `run`'s state in torch.optim.Adam's format (for `fit`'s checkpoint)."""
        for k, p in model.named_parameters():
            if self.steps[k][run] > 0:
                optimizer.state[p] = {
                    "step": torch.tensor(float(self.steps[k][run])),
                    "exp_avg": self.exp_avg[k][run].detach().clone(),
                    "exp_avg_sq": self.exp_avg_sq[k][run].detach().clone()}
        return optimizer.state_dict()


class StackedRuns:
    """The stacked state of N models of one architecture, and one vmapped loss over it."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        if not models:
            raise ValueError("fit_stacked needs at least one model")
        shapes = [[(k, v.shape, v.dtype) for k, v in m.state_dict().items()] for m in models]
        if any(type(m) is not type(models[0]) or s != shapes[0]
               for m, s in zip(models, shapes, strict=True)):
            raise ValueError("stacked runs must share one architecture (same model class "
                             "and parameter shapes)")
        devices = {p.device for m in models for p in m.parameters()}
        if len(devices) != 1:
            raise ValueError(f"stacked runs must be on one device, got {sorted(map(str, devices))}")
        self.models = list(models)
        for model in self.models:
            model.train()  # as `fit`; only models[0] runs (functionally), the rest hold state
        self.device = devices.pop()
        self.params, self.buffers = stack_module_state(list(models))
        self.params = {k: p.detach().requires_grad_() for k, p in self.params.items()}
        self.call = _LossCall(models[0])

        def one(params: Tensors, buffers: Tensors, lx: Tensors, ly: torch.Tensor,
                ux: Tensors) -> tuple[torch.Tensor, Tensors]:
            state = ({f"model.{k}": v for k, v in params.items()},
                     {f"model.{k}": v for k, v in buffers.items()})
            return functional_call(self.call, state, (lx, ly, ux), strict=True)

        self._losses = vmap(one, randomness="different")

    def __len__(self) -> int:
        return len(self.models)

    def rows(self, runs: list[int]) -> Tensors:
        """The parameters of `runs`, to differentiate by: the stacked leaves themselves
        when every run takes the step, else copies of their rows (new leaves)."""
        if runs == list(range(len(self))):
            return self.params
        idx = torch.tensor(runs, device=self.device)
        return {k: p.detach().index_select(0, idx).requires_grad_()
                for k, p in self.params.items()}

    def losses(self, runs: list[int], params: Tensors, labelled: Batch,
               unlabelled: Batch) -> tuple[torch.Tensor, Tensors]:
        """Loss and terms of each run in `runs` (train mode), on stacked batches.

        `params` is `rows(runs)`; `labelled.x[m]` is [len(runs), N, D], `labelled.y`
        [len(runs), N], `unlabelled.x[m]` [len(runs), M, D]. BatchNorm's running statistics
        of those runs are updated in `self.buffers`.
        """
        if labelled.y is None:
            raise ValueError("a labelled batch needs y")
        full = runs == list(range(len(self)))
        idx = torch.tensor(runs, device=self.device)
        buffers = self.buffers if full else {k: b.index_select(0, idx)
                                             for k, b in self.buffers.items()}
        self.call.train()
        with vmappable_normal_noise():
            loss, terms = self._losses(params, buffers, labelled.x, labelled.y, unlabelled.x)
        if not full:
            for k, b in buffers.items():
                self.buffers[k].index_copy_(0, idx, b)
        return loss, terms

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy each run's parameters and buffers into its model (a plain nn.Module)."""
        for r, model in enumerate(self.models):
            for k, p in model.named_parameters():
                p.copy_(self.params[k][r])
            for k, b in model.named_buffers():
                b.copy_(self.buffers[k][r])


def _gather(parts: Sequence[Batch], indices: Sequence[np.ndarray],
            device: torch.device) -> Batch:
    """Rows `indices[i]` of `parts[i]`, stacked along a new first (run) dimension."""
    idx = [torch.from_numpy(i).to(device) for i in indices]
    x = {m: torch.stack([p.x[m].index_select(0, i) for p, i in zip(parts, idx, strict=True)])
         for m in parts[0].x}
    y = None
    if parts[0].y is not None:
        y = torch.stack([p.y.index_select(0, i) for p, i in zip(parts, idx, strict=True)])
    return Batch(x, y)


def _clip_per_run(grads: dict[str, torch.Tensor], max_norm: float) -> dict[str, torch.Tensor]:
    """torch's clip_grad_norm_ (L2 over all parameters), separately for each row (run).

    Out of place: a gradient from autograd.grad may be a view (an expanded sum, say)."""
    squares = sum(g.float().flatten(1).pow(2).sum(1) for g in grads.values())
    total = torch.as_tensor(squares).sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    return {k: g * coef.view((-1,) + (1,) * (g.dim() - 1)).to(g.dtype)
            for k, g in grads.items()}


def fit_stacked(models: Sequence[nn.Module], datas: Sequence[TrialData],
                settings: FitSettings, *, progress: bool = True,
                names: Sequence[str] | None = None,
                on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
                checkpoints: Sequence[Path] | None = None,
                fingerprints: Sequence[dict[str, Any]] | None = None,
                ) -> list[list[dict[str, float]]]:
    """Train `models[i]` on `datas[i]` for every i at once; return each run's history.

    Each model ends holding its trained weights and BatchNorm statistics, as after `fit`.
    `names` label the runs in errors and `on_epoch(run, epoch, means)` is called after each
    epoch for each run, with the models already holding that epoch's weights. With
    `checkpoints`, each run's `fit`-format checkpoint (with `fingerprints[i]`) is written
    at the end; there is no per-epoch checkpoint and no resume.
    """
    if len(models) != len(datas):
        raise ValueError(f"{len(models)} models but {len(datas)} data sets")
    names = list(names) if names is not None else [f"run {i}" for i in range(len(models))]
    for name, data in zip(names, datas, strict=True):
        n_l, n_u = len(data.labelled), len(data.unlabelled)
        if n_l < 1 or n_u < 2:
            raise UserError(f"{name}: training needs at least 1 labelled and 2 unlabelled "
                            f"examples, got {n_l} and {n_u}")
    torch.manual_seed(settings.seed)
    rngs = [np.random.default_rng(settings.seed) for _ in models]
    stack = StackedRuns(models)
    optimizer = _StackedAdam(stack.params, settings.lr)
    dtype = autocast_dtype(settings.precision)
    histories: list[list[dict[str, float]]] = [[] for _ in models]
    bar = tqdm(range(settings.epochs), desc=f"epochs ({len(models)} stacked)",
               disable=not progress, leave=False)
    for epoch in bar:
        plans = [list(epoch_batches(rng, len(d.unlabelled), len(d.labelled), settings))
                 for rng, d in zip(rngs, datas, strict=True)]
        sums: dict[str, torch.Tensor] = {}
        for t in range(max(len(plan) for plan in plans)):
            groups: dict[tuple[int, int], list[int]] = {}
            for r, plan in enumerate(plans):
                if t < len(plan):
                    groups.setdefault((len(plan[t][0]), len(plan[t][1])), []).append(r)
            for runs in groups.values():
                batches = [plans[r][t] for r in runs]
                try:
                    logged = _step(stack, optimizer, runs, batches, [datas[r] for r in runs],
                                   settings, dtype)
                except ValueError as err:
                    if "Expected parameter" not in str(err):
                        raise
                    # torch.distributions refused a NaN/inf parameter (as in `fit`, where
                    # it raises the same ValueError); say which run it came from.
                    culprits = _non_finite_runs(stack, runs, batches,
                                                [datas[r] for r in runs]) or runs
                    raise NonFiniteLossError(
                        f"{', '.join(names[r] for r in culprits)}: a distribution's parameters "
                        f"became non-finite in epoch {epoch + 1} ({str(err).splitlines()[0]}); "
                        "try a lower train.lr, train.grad_clip > 0, or train.precision=fp32"
                    ) from err
                idx = torch.tensor(runs, device=stack.device)
                for name, value in logged.items():
                    total = sums.setdefault(name, torch.zeros(len(models), dtype=torch.float32,
                                                              device=stack.device))
                    total.index_add_(0, idx, value.float())
        table = torch.stack(list(sums.values())).cpu().numpy()  # one host sync per epoch
        stack.write_back()
        for r, history in enumerate(histories):
            means = {name: float(table[i, r]) / len(plans[r]) for i, name in enumerate(sums)}
            bad = sorted(name for name, value in means.items() if not np.isfinite(value))
            if bad:
                raise NonFiniteLossError(
                    f"{names[r]}: the loss became non-finite in epoch {epoch + 1} (terms: "
                    f"{', '.join(bad)}); try a lower train.lr, train.grad_clip > 0, or "
                    "train.precision=fp32")
            history.append(means)
            if on_epoch is not None:
                on_epoch(r, epoch, means)
        mean_loss = sum(h[-1]["loss"] for h in histories) / len(histories)
        bar.set_postfix(loss=f"{mean_loss:.4g}")
    bar.close()
    if checkpoints is not None:
        _save_checkpoints(stack, optimizer, rngs, histories, settings, checkpoints,
                          fingerprints)
    return histories


def _step(stack: StackedRuns, optimizer: _StackedAdam, runs: list[int],
          batches: list[tuple[np.ndarray, np.ndarray]], datas: list[TrialData],
          settings: FitSettings, dtype: torch.dtype | None) -> Tensors:
    """One optimisation step of the runs `runs` (equal batch sizes); their logged terms."""
    labelled = _gather([d.labelled for d in datas], [b[0] for b in batches], stack.device)
    unlabelled = _gather([d.unlabelled for d in datas], [b[1] for b in batches], stack.device)
    params = stack.rows(runs)
    with torch.autocast(stack.device.type, dtype=dtype or torch.float32,
                        enabled=dtype is not None):
        loss, terms = stack.losses(runs, params, labelled, unlabelled)
    # The sum of the runs' losses: each run's loss reaches only its own rows. autograd.grad
    # rather than backward(): no accumulation into .grad (a copy per parameter).
    names = list(params)
    found = torch.autograd.grad(loss.sum(), [params[k] for k in names], allow_unused=True)
    grads = {k: g for k, g in zip(names, found, strict=True) if g is not None}
    if settings.grad_clip > 0:
        grads = _clip_per_run(grads, settings.grad_clip)
    optimizer.step(runs, grads)
    return {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}


def _non_finite_runs(stack: StackedRuns, runs: list[int],
                     batches: list[tuple[np.ndarray, np.ndarray]],
                     datas: list[TrialData]) -> list[int]:
    """The runs of a step whose parameters or batch hold NaN or inf."""
    found = []
    for r, (l_idx, u_idx), data in zip(runs, batches, datas, strict=True):
        tensors = [p[r] for p in stack.params.values()]
        tensors += [t[torch.from_numpy(l_idx)] for t in data.labelled.x.values()]
        tensors += [t[torch.from_numpy(u_idx)] for t in data.unlabelled.x.values()]
        if not all(bool(torch.isfinite(t).all()) for t in tensors):
            found.append(r)
    return found


def _save_checkpoints(stack: StackedRuns, optimizer: _StackedAdam,
                      rngs: list[np.random.Generator], histories: list[list[dict[str, float]]],
                      settings: FitSettings, checkpoints: Sequence[Path],
                      fingerprints: Sequence[dict[str, Any]] | None) -> None:
    """Each run's final state in `fit`'s checkpoint format (a finished run to `fit`)."""
    for r, (model, path) in enumerate(zip(stack.models, checkpoints, strict=True)):
        adam = torch.optim.Adam(model.parameters(), lr=settings.lr,
                                fused=stack.device.type == "cuda")
        torch_save({"epoch": settings.epochs, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict_of(r, model, adam),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": (torch.cuda.get_rng_state_all()
                                 if stack.device.type == "cuda" else []),
                    "numpy_rng": rngs[r].bit_generator.state, "history": histories[r],
                    "fingerprint": (fingerprints[r] if fingerprints else {})}, path)
