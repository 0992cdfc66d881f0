"""Every model on scikit-learn's digits as two views (left / right half), 5% labelled.

Real data with a known answer, small enough for a CPU: prints a Markdown table of test
accuracy (mean ± std over seeds) per model and input, beside the labelled-only baseline.

    python bench/digits_table.py --seeds 0 1 2 [--set train.alpha=50 ...]
    python bench/digits_table.py --seeds 0 1 2 3 4 --models ct_svm cotraining label_spreading
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.classical import CLASSICAL
from pipeline.classical.experiment import train_and_evaluate_classical
from pipeline.config import load_config
from pipeline.vae import MODELS
from pipeline.vae.experiment import train_and_evaluate
from tests.digits import write_digits

# Sizes for 32-d views (the paper's 1024-unit layers are for 4096-d features).
DIGITS = ["train.epochs=100", "train.lr=1e-3", "train.hidden=128", "train.a_dim=32",
          "train.z_dim=32", "train.iterative_steps=100"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS),
                        choices=[*MODELS, *CLASSICAL])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", type=Path, help="also write all runs here")
    args = parser.parse_args()
    cfg = load_config(None, DIGITS + args.overrides).train
    print(f"settings: {' '.join(DIGITS + args.overrides)}", flush=True)
    runs: dict[str, list[dict]] = {m: [] for m in args.models}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            features = write_digits(Path(tmp) / f"digits-{seed}.h5", seed=seed)
            for model in args.models:
                run = (train_and_evaluate_classical if model in CLASSICAL
                       else train_and_evaluate)
                metrics = run(features, model, cfg, Path(tmp) / f"{model}-{seed}",
                              progress=False, live=False)
                runs[model].append(metrics)
                print(f"seed {seed} {model}: {json.dumps(metrics['accuracy'])}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    print(table(runs))


def table(runs: dict[str, list[dict]]) -> str:
    keys = ["left", "right", "left+right"]
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    rows = []
    for model, results in runs.items():
        rows.append(((MODELS | CLASSICAL)[model].title, [r["accuracy"] for r in results]))
        if model == "ss_hmvae":
            rows.append(("SS-HMVAE (iterative sampling)",
                         [r["accuracy_iterative"] for r in results]))
    for title, accs in rows:
        cells = []
        for key in keys:
            values = [100 * a[key] for a in accs if key in a]
            spread = np.std(values, ddof=1) if len(values) > 1 else 0.0
            cells.append(f"{np.mean(values):.1f} ± {spread:.1f}" if values else "–")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
