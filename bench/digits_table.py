"""Every model of Table 1 on a real two-view data set (bench/two_views.py), 5 % labelled.

Real data with a known answer, small enough for a CPU. For each likelihood it prints a
Markdown table of test accuracy (mean ± sample std over seeds) per model and input, with
the configured prediction options, beside the labelled-only MLP and label spreading (the
`label_spreading` model); then every prediction option (posterior mean or Monte-Carlo
q(y|x); mean or sampled fill for iterative sampling) from the same runs; with --alphas, an
α sweep. The co-training models run with --models ct_svm cotraining label_spreading; each
co-training row comes with the labelled-only SVMs it starts from.

With --select-on validation nothing is chosen on test rows: each seed's training rows are
split again (`two_views.validation_split`: 30 % validation, 5 % of the rest labelled), every
variant of a row (its likelihood; the fill of the iterative-sampling row; the co-training
penalty) is trained on that file and scored on its validation rows, and only the variant
with the best mean validation accuracy over the row's inputs (ties: the earlier one listed)
is trained on the seed's own file and scored on its test rows. It prints the validation
accuracy of every variant, then the test accuracy of the chosen ones with how often each
was chosen.

    python bench/digits_table.py --dataset digits --seeds 0 1 2 3 4 \
        --likelihoods gaussian gaussian_fixed bernoulli --json runs.json
    python bench/digits_table.py --dataset breast_cancer --models ss_hmvae_kl \
        --alphas 1 0.1N/Nl 10 50
    python bench/digits_table.py --dataset digits --select-on validation \
        --likelihoods gaussian_fixed gaussian bernoulli --penalties 1e-2 1e-3 1e-4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.two_views import DATASETS, validation_split, write_dataset
from pipeline import titles
from pipeline.classical import CLASSICAL
from pipeline.classical.experiment import train_and_evaluate_classical
from pipeline.config import load_config
from pipeline.store import read_features, write_features
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
    parser.add_argument("--models", nargs="+", default=list(MODELS),
                        choices=[*MODELS, *CLASSICAL])
    parser.add_argument("--likelihoods", nargs="+", default=["gaussian"])
    parser.add_argument("--alphas", nargs="+", help="α values (0.1N/Nl: Kingma's scaling)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", type=Path, help="also write all runs here")
    parser.add_argument("--select-on", choices=["none", "validation"], default="none",
                        help="validation: choose every variant on a validation split of the "
                             "training rows, report test accuracy of the choices only")
    parser.add_argument("--penalties", nargs="+", type=float, default=[1e-2],
                        help="co-training SVM penalties (classical.penalty) to choose from")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = SETTINGS[args.dataset] + args.overrides
    print(f"{args.dataset}: {' '.join(settings)}; seeds {args.seeds}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = {seed: write_dataset(args.dataset, Path(tmp) / f"{seed}.h5", seed)
                 for seed in args.seeds}
        if args.select_on == "validation":
            result = select_on_validation(files, args.models, settings, args.likelihoods,
                                          args.penalties, Path(tmp))
        elif args.alphas:
            runs = {f"α = {a}": run(files, args.models, settings, Path(tmp), alpha=a)
                    for a in args.alphas}
            result = {"alpha": runs}
            print(alpha_table(runs, views(files)))
        else:
            runs = {lik: run(files, args.models, [*settings, f"train.likelihood={lik}"],
                             Path(tmp)) for lik in args.likelihoods}
            spreading = [r["accuracy"] for r in run(files, ["label_spreading"], settings,
                                                    Path(tmp))["label_spreading"]]
            result = {"likelihood": runs, "label_spreading": spreading}
            for lik, by_model in runs.items():
                print(f"\nlikelihood: {lik}\n")
                print(table(by_model, spreading, views(files)))
                print(f"\nprediction options, likelihood {lik}\n")
                print(options_table(by_model, views(files)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the table: its variants (name -> `--set` overrides and fill) and how to
    read its accuracies from a run's metrics under a fill."""

    title: str
    model: str
    variants: dict[str, tuple[list[str], str | None]]

    def read(self, metrics: dict, fill: str | None, prediction: str) -> dict[str, float]:
        if fill is None:
            return metrics["accuracy"]
        # the iterative-sampling row under this fill (the joint input needs no fill)
        return (metrics["accuracy_by_option"]["iterative"][f"{fill}_fill/{prediction}"]
                | metrics["accuracy_by_method"]["joint"])


def rows_to_select(models: list[str], likelihoods: list[str], penalties: list[float]
                   ) -> list[Row]:
    """Every row and its variants, the paper's or the configured value first (ties)."""
    rows = []
    for model in models:
        if model in CLASSICAL:
            variants = ({f"penalty {p:g}": ([f"classical.penalty={p}"], None)
                         for p in penalties} if model != "label_spreading"
                        else {"(none)": ([], None)})
            rows.append(Row(titles.title(model), model, variants))
            continue
        rows.append(Row(titles.title(model), model,
                        {lik: ([f"train.likelihood={lik}"], None) for lik in likelihoods}))
        if model == "ss_hmvae":  # Appendix D samples the fill: listed first
            rows.append(Row("SS-HMVAE (iterative sampling)", model, {
                f"{lik}, {fill} fill": ([f"train.likelihood={lik}"], fill)
                for lik in likelihoods for fill in ("sample", "mean")}))
    return rows


def select_on_validation(files: dict[int, Path], models: list[str], settings: list[str],
                         likelihoods: list[str], penalties: list[float], tmp: Path) -> dict:
    """Each row's variant chosen per seed on a validation split of the training rows; only
    the chosen variant is then run on the seed's file and scored on its test rows."""
    prediction = load_config(None, settings).train.prediction
    rows = rows_to_select(models, likelihoods, penalties)
    cache: dict[tuple[Path, str, tuple[str, ...]], dict] = {}

    def cached(features: Path, model: str, overrides: list[str], seed: int) -> dict:
        key = (features, model, tuple(overrides))
        if key not in cache:
            cache[key] = train(features, model, [*settings, *overrides], seed,
                               tmp / f"run-{len(cache)}")
        return cache[key]

    result: dict[str, dict] = {r.title: {"validation": {v: [] for v in r.variants},
                                         "chosen": [], "test": [], "start": []} for r in rows}
    for seed, features in files.items():
        held = tmp / f"validation-{seed}.h5"
        write_features(held, validation_split(read_features(features), seed + 1000))
        for row in rows:
            scores = {}
            for name, (overrides, fill) in row.variants.items():
                accuracy = row.read(cached(held, row.model, overrides, seed), fill, prediction)
                result[row.title]["validation"][name].append(accuracy)
                scores[name] = float(np.mean(list(accuracy.values())))
            chosen = max(scores, key=scores.get)  # the first of equal scores
            overrides, fill = row.variants[chosen]
            metrics = cached(features, row.model, overrides, seed)
            result[row.title]["chosen"].append(chosen)
            result[row.title]["test"].append(row.read(metrics, fill, prediction))
            if "accuracy_start" in metrics:
                result[row.title]["start"].append(metrics["accuracy_start"])
    print("\nvalidation accuracy of every variant (validation rows of the training rows)\n")
    print(validation_table(result, views(files)))
    print("\ntest accuracy of the variant chosen on validation (chosen: times of "
          f"{len(files)} seeds)\n")
    print(chosen_table(result, views(files)))
    return {"select_on": "validation", "rows": result}


def validation_table(result: dict[str, dict], keys: list[str]) -> str:
    lines = ["| row | variant | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for title, r in result.items():
        for name, accs in r["validation"].items():
            lines.append(f"| {title} | {name} | "
                         + " | ".join(cell([a[k] for a in accs if k in a]) for k in keys) + " |")
    return "\n".join(lines)


def chosen_table(result: dict[str, dict], keys: list[str]) -> str:
    lines = ["| row | chosen | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for title, r in result.items():
        counts = ", ".join(f"{name} ×{r['chosen'].count(name)}"
                           for name in r["validation"] if name in r["chosen"])
        lines.append(f"| {title} | {counts} | "
                     + " | ".join(cell([a[k] for a in r["test"] if k in a]) for k in keys)
                     + " |")
        if r["start"]:
            lines.append("| its start: labelled-only SVMs | (same runs) | "
                         + " | ".join(cell([a[k] for a in r["start"]]) for k in keys) + " |")
    return "\n".join(lines)


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
        for model in models:
            runs[model].append(train(features, model, [*settings, *extra], seed,
                                     tmp / f"{model}-{seed}"))
    return runs


def train(features: Path, model: str, overrides: list[str], seed: int, out: Path) -> dict:
    """One run of `model` on `features` with `--set`-style `overrides` and `seed`."""
    config = load_config(None, [*overrides, f"train.seed={seed}", f"classical.seed={seed}"])
    if model in CLASSICAL:
        metrics = train_and_evaluate_classical(features, model, config.classical, out,
                                               progress=False, live=False)
    else:
        metrics = train_and_evaluate(features, model, config.train, out, progress=False,
                                     live=False)
    print(f"seed {seed} {features.name} {model} {' '.join(overrides)}: "
          f"{json.dumps(metrics['accuracy'])}", flush=True)
    return metrics


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
        rows.append((titles.title(model), [r["accuracy"] for r in results]))
        if model == "ss_hmvae":
            rows.append(("SS-HMVAE (iterative sampling)",
                         [r["accuracy_iterative"] for r in results]))
        if "accuracy_start" in results[0]:
            rows.append((f"  its start: labelled-only SVMs ({model})",
                         [r["accuracy_start"] for r in results]))
    rows.append((titles.title("label_spreading"), spreading))
    for title, accs in rows:
        cells = [cell([a[key] for a in accs if key in a]) for key in keys]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def options_table(runs: dict[str, list[dict]], keys: list[str]) -> str:
    """Every prediction option of every model that has more than one."""
    lines = ["| model | method | option | " + " | ".join(keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for model, results in runs.items():
        for method, options in results[0].get("accuracy_by_option", {}).items():
            if len(options) < 2:
                continue
            for option in options:
                cells = [cell([r["accuracy_by_option"][method][option][k] for r in results
                               if k in r["accuracy_by_option"][method][option]]) for k in keys]
                lines.append(f"| {titles.title(model)} | {method} | {option} | "
                             + " | ".join(cells) + " |")
    return "\n".join(lines)


def alpha_table(runs: dict[str, dict[str, list[dict]]], keys: list[str]) -> str:
    lines = ["| α | model | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for alpha, by_model in runs.items():
        for model, results in by_model.items():
            cells = [cell([r["accuracy"][k] for r in results if k in r["accuracy"]])
                     for k in keys]
            lines.append(f"| {alpha.split('= ')[1]} | {titles.title(model)} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
