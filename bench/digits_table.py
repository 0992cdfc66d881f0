"""Every model of Table 1 on a real two-view data set (bench/two_views.py), 5 % labelled.

Real data with a known answer, small enough for a CPU. For each likelihood it prints a
Markdown table of test accuracy (mean ± sample std over seeds) per model and input, with
the configured prediction options, beside the labelled-only MLP and scikit-learn's
LabelSpreading; then every prediction option (posterior mean or Monte-Carlo q(y|x); mean or
sampled fill for iterative sampling) from the same runs; with --alphas, an α sweep.

    python bench/digits_table.py --dataset digits --seeds 0 1 2 3 4 \
        --likelihoods gaussian gaussian_fixed bernoulli --json runs.json
    python bench/digits_table.py --dataset breast_cancer --models ss_hmvae_kl \
        --alphas 1 0.1N/Nl 10 50
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.two_views import DATASETS, write_dataset
from pipeline.config import load_config
from pipeline.store import read_features
from pipeline.vae import MODELS
from pipeline.vae.experiment import train_and_evaluate

# Sizes for small views (the paper's 1024-unit layers are for 4096-d features).
SETTINGS = {
    "digits": ["train.epochs=100", "train.lr=1e-3", "train.hidden=128", "train.a_dim=32",
               "train.z_dim=32", "train.iterative_steps=100"],
    "breast_cancer": ["train.epochs=200", "train.lr=1e-3", "train.hidden=64", "train.a_dim=16",
                      "train.z_dim=16", "train.iterative_steps=100"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits", choices=list(DATASETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--likelihoods", nargs="+", default=["gaussian"])
    parser.add_argument("--alphas", nargs="+", help="α values (0.1N/Nl: Kingma's scaling)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", type=Path, help="also write all runs here")
    args = parser.parse_args()
    settings = SETTINGS[args.dataset] + args.overrides
    print(f"{args.dataset}: {' '.join(settings)}; seeds {args.seeds}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = {seed: write_dataset(args.dataset, Path(tmp) / f"{seed}.h5", seed)
                 for seed in args.seeds}
        if args.alphas:
            runs = {f"α = {a}": run(files, args.models, settings, Path(tmp), alpha=a)
                    for a in args.alphas}
            result = {"alpha": runs}
            print(alpha_table(runs, views(files)))
        else:
            runs = {lik: run(files, args.models, [*settings, f"train.likelihood={lik}"],
                             Path(tmp)) for lik in args.likelihoods}
            spreading = [label_spreading(files[seed]) for seed in args.seeds]
            result = {"likelihood": runs, "label_spreading": spreading}
            for lik, by_model in runs.items():
                print(f"\nlikelihood: {lik}\n")
                print(table(by_model, spreading, views(files)))
                print(f"\nprediction options, likelihood {lik}\n")
                print(options_table(by_model, views(files)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def views(files: dict[int, Path]) -> list[str]:
    modalities = read_features(next(iter(files.values()))).modalities
    return [*modalities, "+".join(modalities)]


def run(files: dict[int, Path], models: list[str], settings: list[str], tmp: Path, *,
        alpha: str | None = None) -> dict[str, list[dict]]:
    """Every model on every seed's file; `alpha` "0.1N/Nl" is Kingma et al.'s 0.1 * N / N_l."""
    runs: dict[str, list[dict]] = {m: [] for m in models}
    for seed, features in files.items():
        extra = [f"train.seed={seed}"]
        if alpha == "0.1N/Nl":
            data = read_features(features)
            extra.append(f"train.alpha={0.1 * (~data.is_test).sum() / data.is_labeled.sum()}")
        elif alpha is not None:
            extra.append(f"train.alpha={alpha}")
        cfg = load_config(None, [*settings, *extra]).train
        for model in models:
            metrics = train_and_evaluate(features, model, cfg, tmp / f"{model}-{seed}",
                                         progress=False, live=False)
            runs[model].append(metrics)
            print(f"{' '.join(extra)} {cfg.likelihood} {model}: "
                  f"{json.dumps(metrics['accuracy'])}", flush=True)
    return runs


def label_spreading(features: Path) -> dict[str, float]:
    """scikit-learn's LabelSpreading (kNN kernel, its default 7 neighbours, chosen without
    looking at any label) on each view and on the concatenation, standardised on the
    training rows; the test rows are unlabelled inputs, scored at the end."""
    from sklearn.semi_supervised import LabelSpreading

    data = read_features(features)
    train = ~data.is_test
    target = np.where(data.is_labeled, data.label, -1)
    accuracy = {}
    for key in views({0: features}):
        x = np.hstack([data.features[m] for m in key.split("+")])
        x = (x - x[train].mean(0)) / np.maximum(x[train].std(0), 1e-12)
        model = LabelSpreading(kernel="knn", n_neighbors=7, max_iter=1000).fit(x, target)
        pred = model.transduction_[data.is_test]
        accuracy[key] = float((pred == data.label[data.is_test]).mean())
    return accuracy


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    values = [100 * v for v in values]
    spread = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{np.mean(values):.1f} ± {spread:.1f}"


def table(runs: dict[str, list[dict]], spreading: list[dict], keys: list[str]) -> str:
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    rows = []
    for model, results in runs.items():
        rows.append((MODELS[model].title, [r["accuracy"] for r in results]))
        if model == "ss_hmvae":
            rows.append(("SS-HMVAE (iterative sampling)",
                         [r["accuracy_iterative"] for r in results]))
    rows.append(("LabelSpreading (kNN, scikit-learn)", spreading))
    for title, accs in rows:
        cells = [cell([a[key] for a in accs if key in a]) for key in keys]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def options_table(runs: dict[str, list[dict]], keys: list[str]) -> str:
    """Every prediction option of every model that has more than one."""
    lines = ["| model | method | option | " + " | ".join(keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for model, results in runs.items():
        for method, options in results[0]["accuracy_by_option"].items():
            if len(options) < 2:
                continue
            for option in options:
                cells = [cell([r["accuracy_by_option"][method][option][k] for r in results
                               if k in r["accuracy_by_option"][method][option]]) for k in keys]
                lines.append(f"| {MODELS[model].title} | {method} | {option} | "
                             + " | ".join(cells) + " |")
    return "\n".join(lines)


def alpha_table(runs: dict[str, dict[str, list[dict]]], keys: list[str]) -> str:
    lines = ["| α | model | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for alpha, by_model in runs.items():
        for model, results in by_model.items():
            cells = [cell([r["accuracy"][k] for r in results if k in r["accuracy"]])
                     for k in keys]
            lines.append(f"| {alpha.split('= ')[1]} | {MODELS[model].title} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
