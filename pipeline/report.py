"""Table 1: per-trial accuracies of every model aggregated to mean ± std, as JSON, Markdown, PNG.

Rows follow the paper, grouped as it groups them (unimodal, multimodal, proposed; models in
`train.models` order within a group, SS-HMVAE's iterative sampling as its own row), then the
references: the labelled-only MLP, the fine-tuned VGG16 networks (the supervised reference)
and label spreading (the classical peer). Columns are the
input modalities and their joint key (`rgb`, `depth`, `rgb+depth`). Accuracies are percent;
std is the sample standard deviation over the trials run (ddof = 1; 0 for one trial).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_path
from pipeline.errors import UserError

KEYS = ("rgb", "depth", "rgb+depth")
VGG16_ROW = "vgg16"
ITERATIVE_ROW = "ss_hmvae_iterative"

# Table 1's groups of rows, in order; a row in none of them goes last, with the references.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("unimodal", ("m2", "sdgm")),
    ("multimodal", ("ct_svm", "cotraining", "ss_mvae")),
    ("proposed", ("ss_hmvae", ITERATIVE_ROW, "ss_hmvae_kl")),
    ("reference", ("mlp", VGG16_ROW, "label_spreading")),
)

# Suzuki & Matsuo, Table 1: mean and std (%) over 10 trials, 5% labelled; std None where the
# paper gives none (CT+SVM's numbers, copied by the paper from Cheng et al., 2015).
PAPER_TABLE1: dict[str, dict[str, tuple[float, float | None]]] = {
    "m2": {"rgb": (85.6, 1.6), "depth": (72.0, 1.7)},
    "sdgm": {"rgb": (85.6, 1.9), "depth": (75.8, 1.7)},
    "ct_svm": {"rgb": (78.7, None), "depth": (75.4, None), "rgb+depth": (83.7, None)},
    "cotraining": {"rgb": (85.5, 2.0), "depth": (82.6, 2.3), "rgb+depth": (89.2, 1.3)},
    "ss_mvae": {"rgb": (79.6, 1.8), "depth": (34.4, 7.0), "rgb+depth": (89.9, 1.7)},
    "ss_hmvae": {"rgb": (85.4, 2.2), "depth": (41.5, 6.7), "rgb+depth": (90.6, 1.6)},
    ITERATIVE_ROW: {"rgb": (86.4, 2.1), "depth": (54.8, 1.9), "rgb+depth": (90.6, 1.6)},
    "ss_hmvae_kl": {"rgb": (86.8, 2.2), "depth": (81.1, 2.4), "rgb+depth": (90.2, 1.4)},
}


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


def collect(*, vae: Path, vgg16: Path, models: Sequence[str], trials: Sequence[int],
            titles: dict[str, str]) -> list[Row]:
    """Read `vae/<model>/trial-K/metrics.json` and `vgg16/trial-K-<modality>/metrics.json`."""
    rows: list[Row] = []
    for model in models:
        row = Row(model, titles[model])
        iterative = Row(ITERATIVE_ROW, f"{titles[model]} (iterative sampling)")
        for trial in trials:
            path = vae / model / f"trial-{trial}" / "metrics.json"
            metrics = _read_json(path)
            for target, section in ((row, "accuracy"), (iterative, "accuracy_iterative")):
                for key, value in (metrics.get(section) or {}).items():
                    target.values.setdefault(key, []).append(float(value))
        rows.append(row)
        if iterative.values:
            rows.append(iterative)
    reference = Row(VGG16_ROW, "VGG16 fine-tuned, labelled only (supervised reference)")
    for trial in trials:
        for modality in ("rgb", "depth"):
            path = vgg16 / f"trial-{trial}-{modality}" / "metrics.json"
            accuracy = _read_json(path).get("test_accuracy")
            if not isinstance(accuracy, (int, float)):
                raise UserError(f"{path}: expected a number test_accuracy, got {accuracy!r}")
            reference.values.setdefault(modality, []).append(float(accuracy))
    rows.append(reference)
    return grouped(rows)


def group_of(row_id: str) -> str:
    return next((name for name, ids in GROUPS if row_id in ids), GROUPS[-1][0])


def grouped(rows: Sequence[Row]) -> list[Row]:
    """`rows` in the order of GROUPS, keeping their order within a group."""
    order = [name for name, _ in GROUPS]
    return sorted(rows, key=lambda row: order.index(group_of(row.id)))


def to_json(rows: Sequence[Row], *, profile: str, trials: Sequence[int],
            paper: bool) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for row in rows:
        cells = {}
        for key in KEYS:
            stats = row.stats(key)
            if stats is not None:
                cells[key] = {"mean": round(stats[0], 2), "std": round(stats[1], 2)}
                if paper and key in PAPER_TABLE1.get(row.id, {}):
                    cells[key]["paper_mean"], cells[key]["paper_std"] = PAPER_TABLE1[row.id][key]
        table[row.id] = cells
    groups = {name: [r.id for r in rows if group_of(r.id) == name] for name, _ in GROUPS}
    return {"profile": profile, "trials": list(trials), "unit": "accuracy %", "table1": table,
            "groups": {name: ids for name, ids in groups.items() if ids}}


INPUT_NAMES = {"rgb": "rgb", "depth": "depth", "rgb+depth": "both"}


def headline(rows: Sequence[Row]) -> dict[str, float]:
    """Table 1 as flat, short metric names for `dvc exp show` (`reports/metrics.json`).

    `<row>_<input>` is the mean and `<row>_<input>_sd` the std (%), for every row the report
    has (models of `train.models`, the iterative-sampling row, VGG16); the row's `ss_` prefix
    is dropped and `_iterative` shortened to `_it`, the input is `rgb`, `depth` or `both`:
    `hmvae_kl_both`, `hmvae_it_depth_sd`. Every other detail stays in `table1.json`.
    """
    flat: dict[str, float] = {}
    for row in rows:
        name = row.id.removeprefix("ss_").replace("_iterative", "_it")
        for key in KEYS:
            stats = row.stats(key)
            if stats is not None:
                flat[f"{name}_{INPUT_NAMES[key]}"] = round(stats[0], 2)
                flat[f"{name}_{INPUT_NAMES[key]}_sd"] = round(stats[1], 2)
    return flat


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
    for row in rows:
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
    if not paper:
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
