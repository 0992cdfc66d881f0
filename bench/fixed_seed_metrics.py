"""Fixed-seed CPU metrics of every model on the digits data: run before and after a change.

Speed work must not change results. This trains each model for a few epochs on
scikit-learn's digits (two views, 5% labelled) with a fixed seed on the CPU and one thread,
and prints (or, with --out, writes) every accuracy and the final loss as JSON. Compare two
runs with --compare OLD.json: any difference is printed and the exit status is 1.

    python bench/fixed_seed_metrics.py --out before.json
    python bench/fixed_seed_metrics.py --compare before.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import TrainConfig
from pipeline.vae import MODELS
from pipeline.vae.experiment import train_and_evaluate
from tests.digits import write_digits


def settings(precision: str) -> TrainConfig:
    """Every value a result depends on, pinned: moving a default must not move these runs."""
    return TrainConfig(
        epochs=3, lr=1e-3, batch_size=64, labeled_batch_size=128, hidden=32, a_dim=8, z_dim=8,
        dropout=0.5, alpha=1.0, beta=1.0, likelihood="gaussian", unlabeled_y="gumbel",
        temperature=0.1, iterative_steps=5, iterative_fill="mean", prediction="monte_carlo",
        predict_samples=100, grad_clip=0.0, precision=precision, compile="never", seed=0,
        device="cpu")


def run_all(precisions: list[str]) -> dict[str, dict]:
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        features = write_digits(Path(tmp) / "digits.h5", seed=0)
        for precision in precisions:
            for name in MODELS:
                cfg = settings(precision)
                m = train_and_evaluate(features, name, cfg, Path(tmp) / f"{name}-{precision}",
                                       progress=False, live=False)
                results[f"{name}/{precision}"] = {
                    "accuracy_by_method": m["accuracy_by_method"], "final_loss": m["final_loss"]}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, help="write the metrics here")
    parser.add_argument("--compare", type=Path, help="a file written by --out before")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    args = parser.parse_args()
    results = run_all(args.precision)
    text = json.dumps(results, indent=1, sort_keys=True)
    if args.out:
        args.out.write_text(text + "\n")
    if not args.compare:
        print(text)
        return 0
    before = json.loads(args.compare.read_text())
    differ = [key for key in results if before.get(key) != results[key]]
    for key in differ:
        print(f"{key}: before {before.get(key)}\n{' ' * len(key)}  after  {results[key]}")
    print(f"{len(results) - len(differ)} of {len(results)} runs identical to {args.compare}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
