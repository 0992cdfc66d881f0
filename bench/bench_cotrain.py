"""The classical models' fit at the paper's scale, on random features.

    python bench/bench_cotrain.py [--examples 35000] [--dims 4096] [--classes 51]
                                  [--models ct_svm cotraining label_spreading]

Random RGB and depth features (a per-category mean plus noise, so the SVMs have something
to learn) for `--examples` training examples, 5% labelled as in the paper, and 10% as
many test rows; times `train_and_evaluate_classical` on that file, end to end (reading,
standardising, every round, the evaluation, the files), and prints wall-clock and CPU
seconds per model (CPU time: on a shared machine the wall clock measures the other jobs
too) with the co-training rounds; OMP_NUM_THREADS=1 gives one core's time. It also prints
the CPU time scaled linearly to 35,000 examples: the SVM fits, the PCA and the k-means are
linear in the examples (for label spreading, whose kNN graph is quadratic, this is a lower
bound: measure that one at scale).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import PAPER_TRAIN
from pipeline.classical import CLASSICAL
from pipeline.classical.experiment import train_and_evaluate_classical
from pipeline.config import ClassicalConfig
from pipeline.store import FeatureSet, write_features


def random_features(n_train: int, dims: int, classes: int, seed: int = 0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    n = n_train + n_train // 10
    label = rng.integers(0, classes, n)
    features = {}
    for modality, signal in (("rgb", 1.0), ("depth", 0.7)):
        means = rng.normal(0, signal, (classes, dims)).astype(np.float32)
        x = rng.standard_normal((n, dims), dtype=np.float32)
        x *= 4.0
        x += means[label]
        features[modality] = np.maximum(x, 0, out=x)  # fc1 features are ReLU outputs
    is_test = np.zeros(n, bool)
    is_test[n_train:] = True
    is_labeled = np.zeros(n, bool)
    is_labeled[rng.choice(n_train, round(0.05 * n_train), replace=False)] = True
    return FeatureSet(features=features, label=label, is_test=is_test, is_labeled=is_labeled,
                      categories=[f"c{k}" for k in range(classes)], attrs={"trial": 0})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=PAPER_TRAIN)
    parser.add_argument("--dims", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=51)
    parser.add_argument("--models", nargs="+", default=["ct_svm", "cotraining"],
                        choices=list(CLASSICAL))
    args = parser.parse_args()
    print(f"{args.examples} training examples ({round(0.05 * args.examples)} labelled), "
          f"{args.dims}-d per view, {args.classes} categories; "
          f"{os.cpu_count()} CPU(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.h5"
        write_features(path, random_features(args.examples, args.dims, args.classes))
        print("| model | wall s | CPU s | rounds | handed over | accuracy (rgb / depth / both) "
              "| CPU s scaled to 35k |\n|---|---|---|---|---|---|---|", flush=True)
        for model in args.models:
            start, cpu = time.perf_counter(), time.process_time()
            metrics = train_and_evaluate_classical(path, model, ClassicalConfig(),
                                                   Path(tmp) / model, progress=False)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            scaled = cpu * PAPER_TRAIN / args.examples
            accuracy = " / ".join(f"{100 * v:.1f}" for v in metrics["accuracy"].values())
            print(f"| {model} | {seconds:.1f} | {cpu:.1f} | {metrics.get('rounds', '–')} | "
                  f"{sum(metrics.get('n_handed', {}).values()) or '–'} | {accuracy} | "
                  f"{scaled:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
