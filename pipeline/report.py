"""Table 1: per-trial accuracies of every model aggregated to mean ± std, as JSON, CSV, PNG.

Rows follow the paper, grouped as it groups them (unimodal, multimodal, proposed; models in
`train.models` order within a group, SS-HMVAE's iterative sampling as its own row), then our
co-training rows, each beside the labelled-only SVMs it starts from, then the references:
the labelled-only MLP, the fine-tuned VGG16 networks (the supervised reference) and label
spreading. With the paper's numbers, the paper's CT+SVM† and Co-training† (numbers it copied
from Cheng et al.) are rows of their own, with no run of ours. Titles: `pipeline/titles.py`.
Columns are the input modalities and their joint key (`rgb`, `depth`, `rgb+depth`).
Accuracies are percent; std is the sample standard deviation over the trials run (ddof = 1;
0 for one trial). Every trial's number is kept (`table1.json`, `table1-trials.csv`), also for
every prediction option a model was evaluated with (`accuracy_by_option` of its runs).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import titles
from pipeline.atomic import atomic_path
from pipeline.errors import UserError

KEYS = ("rgb", "depth", "rgb+depth")
VGG16_ROW = "vgg16"
ITERATIVE_ROW = "ss_hmvae_iterative"
# The sections of a run's metrics.json that fill a row of Table 1: section -> row id suffix.
SECTIONS = {"accuracy": "", "accuracy_iterative": "_iterative", "accuracy_start": "_start"}

# Table 1's groups of rows, in order; a row in none of them goes last, with the references.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("unimodal", ("m2", "sdgm")),
    ("multimodal", ("paper_ct_svm", "paper_cotraining", "ss_mvae")),
    ("proposed", ("ss_hmvae", ITERATIVE_ROW, "ss_hmvae_kl")),
    ("co-training (ours)", ("ct_svm", "ct_svm_start", "cotraining", "cotraining_start")),
    ("reference", ("mlp", VGG16_ROW, "label_spreading")),
)

# Suzuki & Matsuo, Table 1: mean and std (%) over 10 trials, 5% labelled; std None where the
# paper gives none. The `paper_` rows are the paper's † rows, copied by it from Cheng et al.
# (2015, 2016): no run of ours computes them, so they are rows of their own.
PAPER_TABLE1: dict[str, dict[str, tuple[float, float | None]]] = {
    "m2": {"rgb": (85.6, 1.6), "depth": (72.0, 1.7)},
    "sdgm": {"rgb": (85.6, 1.9), "depth": (75.8, 1.7)},
    "paper_ct_svm": {"rgb": (78.7, None), "depth": (75.4, None), "rgb+depth": (83.7, None)},
    "paper_cotraining": {"rgb": (85.5, 2.0), "depth": (82.6, 2.3), "rgb+depth": (89.2, 1.3)},
    "ss_mvae": {"rgb": (79.6, 1.8), "depth": (34.4, 7.0), "rgb+depth": (89.9, 1.7)},
    "ss_hmvae": {"rgb": (85.4, 2.2), "depth": (41.5, 6.7), "rgb+depth": (90.6, 1.6)},
    ITERATIVE_ROW: {"rgb": (86.4, 2.1), "depth": (54.8, 1.9), "rgb+depth": (90.6, 1.6)},
    "ss_hmvae_kl": {"rgb": (86.8, 2.2), "depth": (81.1, 2.4), "rgb+depth": (90.2, 1.4)},
}
PAPER_ONLY = ("paper_ct_svm", "paper_cotraining")


@dataclass
class Row:
    """One line of the table: per key, the accuracy (fraction) of each trial in order."""

    id: str
    title: str
    values: dict[str, list[float]] = field(default_factory=dict)

    def stats(self, key: str) -> tuple[float, float, int] | None:
        """(mean %, std %, n) for `key`, or None when the model has no such input."""
        xs = [100.0 * v for v in self.values.get(key, [])]
        if not xs:
            return None
        mean = sum(xs) / len(xs)
        var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0
        return mean, math.sqrt(var), len(xs)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise UserError(f"{path}: metrics file not found (has its stage run?)") from err
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON: {err}") from err


def read_runs(folders: Mapping[str, Path], trials: Sequence[int]) -> dict[str, list[dict]]:
    """model -> the `metrics.json` of each trial, from `folders[model]/trial-K/`."""
    return {model: [_read_json(folder / f"trial-{t}" / "metrics.json") for t in trials]
            for model, folder in folders.items()}


def collect(runs: Mapping[str, Sequence[dict]], *, vgg16: Path,
            trials: Sequence[int]) -> list[Row]:
    """Table 1's rows from `read_runs`' metrics and `vgg16/trial-K-<modality>/metrics.json`."""
    rows: list[Row] = []
    for model, metrics in runs.items():
        for section, suffix in SECTIONS.items():
            row = Row(model + suffix, titles.title(model + suffix))
            for run in metrics:
                for key, value in (run.get(section) or {}).items():
                    row.values.setdefault(key, []).append(float(value))
            if row.values or not suffix:
                rows.append(row)
    reference = Row(VGG16_ROW, titles.title(VGG16_ROW))
    for trial in trials:
        for modality in ("rgb", "depth"):
            path = vgg16 / f"trial-{trial}-{modality}" / "metrics.json"
            accuracy = _read_json(path).get("test_accuracy")
            if not isinstance(accuracy, (int, float)):
                raise UserError(f"{path}: expected a number test_accuracy, got {accuracy!r}")
            reference.values.setdefault(modality, []).append(float(accuracy))
    rows.append(reference)
    return grouped(rows)


def options(runs: Mapping[str, Sequence[dict]]) -> list[Row]:
    """A row `model:method:option` for every option of every run's `accuracy_by_option`."""
    rows: dict[str, Row] = {}
    for model, metrics in runs.items():
        for run in metrics:
            for method, by_option in (run.get("accuracy_by_option") or {}).items():
                for option, accuracy in by_option.items():
                    name = f"{model}:{method}:{option}"
                    row = rows.setdefault(name, Row(name, name))
                    for key, value in accuracy.items():
                        row.values.setdefault(key, []).append(float(value))
    return list(rows.values())


def with_paper_rows(rows: Sequence[Row], paper: bool) -> list[Row]:
    """`rows`, and with the paper's numbers the rows that only the paper has."""
    return grouped([*rows, *(Row(i, titles.title(i)) for i in PAPER_ONLY)]) if paper else list(rows)


def group_of(row_id: str) -> str:
    return next((name for name, ids in GROUPS if row_id in ids), GROUPS[-1][0])


def grouped(rows: Sequence[Row]) -> list[Row]:
    """`rows` in the order of GROUPS, keeping their order within a group."""
    order = [name for name, _ in GROUPS]
    return sorted(rows, key=lambda row: order.index(group_of(row.id)))


def _cells(row: Row, paper: bool) -> dict[str, Any]:
    cells = {}
    for key in KEYS:
        stats = row.stats(key)
        if stats is not None:
            cells[key] = {"mean": round(stats[0], 2), "std": round(stats[1], 2),
                          "trials": [round(100.0 * v, 4) for v in row.values[key]]}
        if paper and key in PAPER_TABLE1.get(row.id, {}):
            cells.setdefault(key, {})
            cells[key]["paper_mean"], cells[key]["paper_std"] = PAPER_TABLE1[row.id][key]
    return cells


def to_json(rows: Sequence[Row], *, profile: str, trials: Sequence[int], paper: bool,
            by_option: Sequence[Row] = ()) -> dict[str, Any]:
    """Each cell: mean, std and every trial's accuracy (%, in the order of `trials`); with
    the paper's numbers, paper_mean and paper_std. `by_option`: the same for `options`."""
    rows = with_paper_rows(rows, paper)
    groups = {name: [r.id for r in rows if group_of(r.id) == name] for name, _ in GROUPS}
    return {"profile": profile, "trials": list(trials), "unit": "accuracy %",
            "table1": {row.id: _cells(row, paper) for row in rows},
            "groups": {name: ids for name, ids in groups.items() if ids},
            "by_option": {row.id: _cells(row, False) for row in by_option}}


def trials_csv(rows: Sequence[Row], trials: Sequence[int]) -> str:
    """One line per row, input and trial: `row,input,trial,accuracy` (%), for a paired test."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["row", "input", "trial", "accuracy"])
    for row in rows:
        for key in KEYS:
            for trial, value in zip(trials, row.values.get(key, []), strict=False):
                writer.writerow([row.id, key, trial, round(100.0 * value, 4)])
    return out.getvalue()


INPUT_NAMES = {"rgb": "rgb", "depth": "depth", "rgb+depth": "both"}


def headline(rows: Sequence[Row]) -> dict[str, dict[str, float]]:
    """Table 1 as DVC metrics: one small file per row (`reports/metrics/<name>.json`), so
    that `dvc metrics show` prints one line per row and six columns, readable at 200 columns.

    Each holds `<input>` (the mean) and `<input>_sd` (the std), %, for the inputs the row has
    (`rgb`, `depth`, `both`). `<name>` is the row's id with `ss_` dropped and `_iterative`
    shortened to `_it`: `hmvae_kl`, `hmvae_it`. Every other detail stays in `table1.json`.
    """
    files: dict[str, dict[str, float]] = {}
    for row in rows:
        name = row.id.removeprefix("ss_").replace("_iterative", "_it")
        for key in KEYS:
            stats = row.stats(key)
            if stats is not None:
                files.setdefault(name, {})[INPUT_NAMES[key]] = round(stats[0], 2)
                files[name][f"{INPUT_NAMES[key]}_sd"] = round(stats[1], 2)
    return files


def _cell(stats: tuple[float, float, int] | None) -> str:
    return "–" if stats is None else f"{stats[0]:.1f} ± {stats[1]:.1f}"


def _paper_cell(ref: tuple[float, float | None] | None) -> str:
    if ref is None:
        return "–"
    return f"{ref[0]}" if ref[1] is None else f"{ref[0]} ± {ref[1]}"


def to_markdown(rows: Sequence[Row], *, profile: str, trials: Sequence[int],
                paper: bool) -> str:
    head = ["group", "model", "RGB", "depth", "RGB+depth"]
    if paper:
        head += ["paper RGB", "paper depth", "paper RGB+depth"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    previous = None
    for row in with_paper_rows(rows, paper):
        group = group_of(row.id)
        cells = [group if group != previous else "", row.title]
        cells += [_cell(row.stats(k)) for k in KEYS]
        previous = group
        if paper:
            ref = PAPER_TABLE1.get(row.id, {})
            cells += [_paper_cell(ref.get(k)) for k in KEYS]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"Accuracy (%) on the held-out instances, mean ± std (sample, ddof = 1) over "
            f"{len(trials)} trial(s) {list(trials)}; profile `{profile}`.")
    if paper:
        note += (" †: numbers the paper copied from Cheng et al. (2015, 2016), not run here; "
                 "our co-training rows are our own algorithm (docs/models.md).")
    else:
        note += (" The paper's numbers are shown only for the paper profile (this profile's "
                 "data and settings are not comparable with them).")
    return "# Table 1\n\n" + "\n".join(lines) + "\n\n" + note + "\n"


def plot(rows: Sequence[Row], path: Path, *, title: str) -> None:
    """Grouped bars (one group per row, one bar per input) with ± std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(KEYS)
    for i, key in enumerate(KEYS):
        xs, means, stds = [], [], []
        for j, row in enumerate(rows):
            stats = row.stats(key)
            if stats is not None:
                xs.append(j + (i - 1) * width)
                means.append(stats[0])
                stds.append(stats[1])
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=key)
    ax.set_xticks(range(len(rows)), [r.title for r in rows], rotation=20, ha="right",
                  fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


# The learning curves drawn for people (reports/curves/<name>.png) and for `dvc plots show`
# (reports/curves/<name>.csv, dvc.yaml's top-level plots): name -> (DVCLive metric, title).
CURVES: dict[str, tuple[str, str]] = {
    "test-accuracy-rgb": ("test/accuracy/rgb", "Test accuracy (%), RGB input"),
    "test-accuracy-depth": ("test/accuracy/depth", "Test accuracy (%), depth input"),
    "test-accuracy-both": ("test/accuracy/rgb+depth", "Test accuracy (%), RGB + depth input"),
    "train-loss": ("train/loss", "Training loss (the negative bound of eq. (4))"),
}


def read_curves(folders: Mapping[str, Path], trials: Sequence[int],
                metric: str) -> dict[str, list[dict[int, float]]]:
    """model -> per trial, step -> value of DVCLive's `metric` (a model without it: none)."""
    found: dict[str, list[dict[int, float]]] = {}
    for model, folder in folders.items():
        for trial in trials:
            path = folder / f"trial-{trial}" / "dvclive" / "plots" / "metrics" / f"{metric}.tsv"
            if path.is_file():
                lines = list(csv.DictReader(path.read_text().splitlines(), delimiter="\t"))
                name = metric.rpartition("/")[2]
                found.setdefault(model, []).append(
                    {int(line["step"]): float(line[name]) for line in lines})
    return found


def _mean_curve(curves: Sequence[dict[int, float]]) -> dict[int, float]:
    """The mean over trials at each step all of them have."""
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return {step: sum(c[step] for c in curves) / len(curves) for step in steps}


def curve_csv(curves: Mapping[str, Sequence[dict[int, float]]], models: Sequence[str],
              scale: float) -> str:
    """`step,<model>,...`: each model's mean over trials (empty where it has none)."""
    means = {m: _mean_curve(curves[m]) for m in models if curves.get(m)}
    steps = sorted(set().union(*(set(c) for c in means.values())))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["step", *models])
    for step in steps:
        writer.writerow([step, *("" if step not in means.get(m, {}) else
                                 round(scale * means[m][step], 4) for m in models)])
    return out.getvalue()


def plot_curve(curves: Mapping[str, Sequence[dict[int, float]]], path: Path, *, title: str,
               scale: float) -> None:
    """Every model's trials overlaid (thin lines) and their mean (thick), one colour a model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (model, runs) in enumerate(curves.items()):
        colour = f"C{i % 10}"
        for run in runs:
            ax.plot(list(run), [scale * v for v in run.values()], color=colour, lw=0.6,
                    alpha=0.4)
        mean = _mean_curve(runs)
        ax.plot(list(mean), [scale * v for v in mean.values()], color=colour, lw=2,
                label=titles.title(model))
    ax.set_xlabel("epoch")
    ax.set_title(title if curves else f"{title}: no model logged it")
    if curves:
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
