"""A whole `python -m pipeline train` run at the paper's sizes against a plain eager step.

    python bench/bench_fit.py [--model ss_hmvae_kl] [--examples 3072] [--test 1024]
                              [--epochs 3] [--device auto] [--threads 1] [--eager-steps 2]

Writes random 4096-d RGB and depth features (`--examples` training rows, 5% labelled as in
the paper, and `--test` test rows, 51 classes) and runs the train stage's command line on
them with the paper profile (1024-unit layers, batches of 128 + 128, `params.yaml`'s
precision), timing from the stage's start: the epochs, the learning-curve evaluations, the
checkpoints and the final evaluation apart. Before and after the run it times a plain eager
PyTorch step of the same model on the same data (fp32, torch.optim.Adam, no autocast, the
distributions' checks on), and between its epochs too (their time taken out of the run's),
so that both see the same load on a shared machine. It reports the run's unlabelled
examples/s, without its final evaluation, as a multiple of the eager step's (issue 17's
target: at least 1.2x). It also
prints what the curves and the checkpoints cost as a share of the training time, and the
final evaluation in epochs of the paper's size (35,000 training rows).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    PAPER_LABELLED,
    PAPER_TEST,
    PAPER_TRAIN,
    device_name,
    sync,
    write_json,
)
from pipeline import engine
from pipeline.__main__ import main as cli
from pipeline.config import TrainConfig
from pipeline.devices import resolve_device
from pipeline.store import FeatureSet, write_features
from pipeline.vae import MODELS, build_model, experiment
from pipeline.vae.objective import Batch

ROOT = Path(__file__).resolve().parents[1]
DIM, CLASSES = 4096, 51


def random_features(path: Path, n_train: int, n_test: int) -> FeatureSet:
    rng = np.random.default_rng(0)
    n = n_train + n_test
    data = FeatureSet(
        features={m: rng.standard_normal((n, DIM), dtype=np.float32) for m in ("rgb", "depth")},
        label=rng.integers(0, CLASSES, n), is_test=np.arange(n) >= n_train,
        is_labeled=np.arange(n) < max(2, n_train // 20),
        categories=[f"c{k}" for k in range(CLASSES)])
    write_features(path, data)
    return data


class EagerStep:
    """A plain eager PyTorch step of the same model on the same data (128 labelled + 128
    unlabelled rows): fp32, torch.optim.Adam, no autocast, the distributions' checks on."""

    def __init__(self, model_name: str, data: FeatureSet, device: torch.device) -> None:
        cfg = TrainConfig()
        torch.manual_seed(0)
        self.model = build_model(model_name, {m: DIM for m in data.features}, CLASSES,
                                 cfg).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.x = {m: torch.from_numpy(v).to(device) for m, v in data.features.items()}
        self.y = torch.from_numpy(data.label).to(device)
        self.g = torch.Generator().manual_seed(0)
        self.batch, self.device = cfg.batch_size, device
        self.seconds: list[float] = []
        self.cpu: list[float] = []  # the process's CPU seconds per step

    def run(self, steps: int) -> tuple[float, float]:
        """Take `steps` timed steps; return the wall-clock and CPU seconds they took."""
        total = cpu = 0.0
        for _ in range(steps):
            rows = torch.randint(0, len(self.y), (2, self.batch), generator=self.g)
            labelled = Batch({m: v[rows[0]] for m, v in self.x.items()}, self.y[rows[0]])
            unlabelled = Batch({m: v[rows[1]] for m, v in self.x.items()})
            sync(self.device)
            start, start_cpu = time.perf_counter(), time.process_time()
            loss, _ = self.model.loss(labelled, unlabelled)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            sync(self.device)
            self.seconds.append(time.perf_counter() - start)
            self.cpu.append(time.process_time() - start_cpu)
            total, cpu = total + self.seconds[-1], cpu + self.cpu[-1]
        return total, cpu


class Clock:
    """Wall-clock marks of one train run, taken by wrapping the stage's own functions."""

    def __init__(self) -> None:
        self.curves = self.checkpoints = self.eager = self.eager_cpu = 0.0
        self.final: tuple[float, float] = (0.0, 0.0)
        self.final_cpu = 0.0  # process CPU seconds when the final evaluation began

    def install(self, patch: Callable[[object, str, object], None], eager: EagerStep,
                steps: int) -> None:
        """Time the run's parts; after each epoch also take `steps` eager steps (their time
        is taken out of the run's), so that both see the same load on a shared machine."""
        check, save = engine._check_finite, engine.Checkpoint.save
        curve, metrics = experiment._curve_accuracy, experiment._metrics

        def timed_check(*args):
            wall, cpu = eager.run(steps)
            self.eager, self.eager_cpu = self.eager + wall, self.eager_cpu + cpu
            return check(*args)

        def timed_save(checkpoint, *args):
            start = time.perf_counter()
            save(checkpoint, *args)
            self.checkpoints += time.perf_counter() - start

        def timed_curve(*args):
            start = time.perf_counter()
            out = curve(*args)
            self.curves += time.perf_counter() - start
            return out

        def timed_metrics(*args):
            start, self.final_cpu = time.perf_counter(), time.process_time()
            out = metrics(*args)
            self.final = (start, time.perf_counter())
            return out

        patch(engine, "_check_finite", timed_check)
        patch(engine.Checkpoint, "save", timed_save)
        patch(experiment, "_curve_accuracy", timed_curve)
        patch(experiment, "_metrics", timed_metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ss_hmvae_kl", choices=list(MODELS))
    parser.add_argument("--examples", type=int, default=3072, help="training rows")
    parser.add_argument("--test", type=int, default=1024, help="test rows")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--eager-steps", type=int, default=2,
                        help="eager steps before, after each epoch of, and after the run")
    parser.add_argument("--json", help="also write the run's overheads and final evaluation "
                        "to this file (for bench/estimate_paper.py)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = random_features(root / "features.h5", args.examples, args.test)
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params.update(profile="paper", trials=list(range(1, 11)))
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        eager = EagerStep(args.model, data, device)
        eager.run(1)
        eager.seconds.clear()  # the first step warms up
        eager.cpu.clear()
        eager.run(args.eager_steps)
        clock = Clock()
        originals = []

        def patch(owner, name, value):
            originals.append((owner, name, getattr(owner, name)))
            setattr(owner, name, value)

        clock.install(patch, eager, args.eager_steps)
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            code = cli(["train", "--params", str(root / "params.yaml"), "--features",
                        str(root / "features.h5"), "--model", args.model, "--out",
                        str(root / "run"), "--no-progress", "--set", f"train.epochs={args.epochs}",
                        "--set", f"train.device={device}"])
        finally:
            for owner, name, value in reversed(originals):
                setattr(owner, name, value)
        assert code == 0, "the train stage failed"
        eager.run(args.eager_steps)
    n_l = max(2, args.examples // 20)
    n_u = args.examples - n_l
    steps = -(-n_u // 128)
    cfg_precision = params["train"].get("precision", TrainConfig.precision)
    # the whole run up to its final evaluation, less the eager steps taken in between
    trained = clock.final[0] - start - clock.eager
    per_epoch = trained / args.epochs
    eager_step = statistics.mean(eager.seconds)
    eager_rate = 128 / eager_step
    run_rate = n_u * args.epochs / trained
    # CPU time: what each side computed, whatever else the machine ran meanwhile
    cpu_ratio = (statistics.mean(eager.cpu) / 128) / (
        (clock.final_cpu - start_cpu - clock.eager_cpu) / (n_u * args.epochs))
    final = clock.final[1] - clock.final[0]
    paper_epoch = per_epoch * -(-(PAPER_TRAIN - PAPER_LABELLED) // 128) / steps
    print(f"device: {device_name(device)}, torch {torch.__version__}; {args.model}, paper "
          f"sizes, precision {cfg_precision}; {args.examples} training rows ({n_l} labelled, "
          f"{steps} steps per epoch), {args.test} test rows, {args.epochs} epochs")
    print(f"plain eager step (fp32): {eager_step:.2f} s, mean of {len(eager.seconds)} taken "
          f"before, between the epochs of and after the run (min {min(eager.seconds):.2f}, max "
          f"{max(eager.seconds):.2f}): {eager_rate:.1f} unlabelled examples/s")
    print(f"train command line, start to final evaluation: {trained:.1f} s = "
          f"{run_rate:.1f} unlabelled examples/s = {run_rate / eager_rate:.2f}x the eager step; "
          f"in CPU time per example (the load of a shared machine aside) {cpu_ratio:.2f}x")
    print(f"learning curves: {clock.curves:.1f} s in all = {clock.curves / trained:.1%} of the "
          f"training time; checkpoints: {clock.checkpoints:.1f} s = "
          f"{clock.checkpoints / trained:.1%}")
    print(f"final evaluation: {final:.1f} s for {args.test} test rows; at the paper's "
          f"{PAPER_TEST:,}: "
          f"~{final * PAPER_TEST / args.test:.0f} s = "
          f"{final * PAPER_TEST / args.test / paper_epoch:.2f} "
          f"epochs of the paper's size (~{paper_epoch:.0f} s each here)")
    write_json(args.json, {"device": device_name(device), "model": args.model,
                           # an epoch's curves (a fixed subset of rows) and checkpoint
                           # (at most one) do not grow with the epoch's steps
                           "overhead_per_epoch_s": (clock.curves + clock.checkpoints)
                           / args.epochs,
                           "final_eval_per_row_s": final / args.test})


if __name__ == "__main__":
    main()
