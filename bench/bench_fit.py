"""A whole `python -m pipeline train` run at the paper's sizes against a plain eager step.

    python bench/bench_fit.py [--model ss_hmvae_kl] [--examples 3072] [--test 1024]
                              [--epochs 3] [--device auto] [--threads 1] [--eager-steps 4]

Writes random 4096-d RGB and depth features (`--examples` training rows, 5% labelled as in
the paper, and `--test` test rows, 51 classes) and runs the train stage's command line on
them with the paper profile (1024-unit layers, batches of 128 + 128, `params.yaml`'s
precision), timing from the stage's start: the epochs, the learning-curve evaluations, the
checkpoints and the final evaluation apart. Before and after, it times a plain eager
PyTorch step of the same model on the same data (fp32, torch.optim.Adam, no autocast, the
distributions' checks on) and reports the run's unlabelled examples/s, without its final
evaluation, as a multiple of the eager step's (issue 17's target: at least 1.2x). It also
prints what the curves and the checkpoints cost as a share of the training time, and the
final evaluation in epochs of the paper's size (35,000 training rows).
"""

from __future__ import annotations

import argparse
import itertools
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

from bench._common import device_name, sync
from pipeline import engine
from pipeline.__main__ import main as cli
from pipeline.config import TrainConfig
from pipeline.devices import resolve_device
from pipeline.store import FeatureSet, write_features
from pipeline.vae import MODELS, build_model, experiment
from pipeline.vae.objective import Batch

ROOT = Path(__file__).resolve().parents[1]
DIM, CLASSES, PAPER_EXAMPLES = 4096, 51, 35_000


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


def eager_seconds(model_name: str, data: FeatureSet, device: torch.device, steps: int) -> float:
    """Seconds per plain eager PyTorch step (128 labelled + 128 unlabelled rows)."""
    cfg = TrainConfig()
    torch.manual_seed(0)
    model = build_model(model_name, {m: DIM for m in data.features}, CLASSES, cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    x = {m: torch.from_numpy(v).to(device) for m, v in data.features.items()}
    y = torch.from_numpy(data.label).to(device)
    g = torch.Generator().manual_seed(0)
    times = []
    for i in range(steps + 1):  # the first one warms up
        rows = torch.randint(0, len(y), (2, cfg.batch_size), generator=g).to(device)
        labelled = Batch({m: v[rows[0]] for m, v in x.items()}, y[rows[0]])
        unlabelled = Batch({m: v[rows[1]] for m, v in x.items()})
        sync(device)
        start = time.perf_counter()
        loss, _ = model.loss(labelled, unlabelled)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sync(device)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


class Clock:
    """Wall-clock marks of one train run, taken by wrapping the stage's own functions."""

    def __init__(self) -> None:
        self.epochs: list[float] = []  # when each epoch's steps ended
        self.curves = self.checkpoints = 0.0
        self.final: tuple[float, float] = (0.0, 0.0)

    def install(self, patch: Callable[[object, str, object], None]) -> None:
        check, save = engine._check_finite, engine.Checkpoint.save
        curve, metrics = experiment._curve_accuracy, experiment._metrics

        def timed_check(*args):
            self.epochs.append(time.perf_counter())
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
            start = time.perf_counter()
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
    parser.add_argument("--eager-steps", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = random_features(root / "features.h5", args.examples, args.test)
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params.update(profile="paper", trials=list(range(1, 11)))
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        eager = [eager_seconds(args.model, data, device, args.eager_steps)]
        clock = Clock()
        originals = []

        def patch(owner, name, value):
            originals.append((owner, name, getattr(owner, name)))
            setattr(owner, name, value)

        clock.install(patch)
        start = time.perf_counter()
        try:
            code = cli(["train", "--params", str(root / "params.yaml"), "--features",
                        str(root / "features.h5"), "--model", args.model, "--out",
                        str(root / "run"), "--no-progress", "--set", f"train.epochs={args.epochs}",
                        "--set", f"train.device={device}"])
        finally:
            for owner, name, value in reversed(originals):
                setattr(owner, name, value)
        assert code == 0, "the train stage failed"
        eager.append(eager_seconds(args.model, data, device, args.eager_steps))
    n_l = max(2, args.examples // 20)
    n_u = args.examples - n_l
    steps = -(-n_u // 128)
    cfg_precision = params["train"].get("precision", TrainConfig.precision)
    trained = clock.final[0] - start  # the whole run up to its final evaluation
    per_epoch = (clock.final[0] - start) / args.epochs
    eager_rate = 128 / statistics.mean(eager)
    run_rate = n_u * args.epochs / trained
    final = clock.final[1] - clock.final[0]
    paper_epoch = per_epoch * -(-int(PAPER_EXAMPLES * 0.95) // 128) / steps
    print(f"device: {device_name(device)}, torch {torch.__version__}; {args.model}, paper "
          f"sizes, precision {cfg_precision}; {args.examples} training rows ({n_l} labelled, "
          f"{steps} steps per epoch), {args.test} test rows, {args.epochs} epochs")
    print(f"plain eager step (fp32): {statistics.mean(eager):.2f} s "
          f"(before {eager[0]:.2f}, after {eager[1]:.2f}): {eager_rate:.1f} unlabelled examples/s")
    print(f"train command line, start to final evaluation: {trained:.1f} s = "
          f"{run_rate:.1f} unlabelled examples/s = {run_rate / eager_rate:.2f}x the eager step")
    marks = [start, *clock.epochs]
    print("epochs (steps, then the previous epoch's curve and checkpoint): "
          + ", ".join(f"{b - a:.1f} s" for a, b in itertools.pairwise(marks)))
    print(f"learning curves: {clock.curves:.1f} s in all = {clock.curves / trained:.1%} of the "
          f"training time; checkpoints: {clock.checkpoints:.1f} s = "
          f"{clock.checkpoints / trained:.1%}")
    print(f"final evaluation: {final:.1f} s for {args.test} test rows; at the paper's 6,877: "
          f"~{final * 6877 / args.test:.0f} s = {final * 6877 / args.test / paper_epoch:.2f} "
          f"epochs of the paper's size (~{paper_epoch:.0f} s each here)")


if __name__ == "__main__":
    main()
