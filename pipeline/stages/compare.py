"""`python -m pipeline compare`: the experiments side by side, α, β and Table 1, transposed.

`dvc exp show` puts one experiment per line and every number in a column: Table 1 alone is
over twenty columns, wider than a terminal. This prints one experiment per column instead:
first the parameters that differ between the experiments shown (always `train.alpha` and
`train.beta`), then each headline metric (`reports/metrics/<row>.json`'s `<input>`) as
`<row>_<input>`, `mean±sd`. It reads
the rows of `dvc.api.exp_show` (the workspace, the commit and its experiments); experiments
without metrics (queued, failed) are left out. Each column is about 12 characters wide: 14
experiments fit in 200 columns.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UserError
from pipeline.stages import run_stage

HEADLINE = "reports/metrics/"  # one file per row of Table 1: <row>.json
ALWAYS = ("train.alpha", "train.beta")
# exp_show's columns that describe a row rather than hold a parameter or a metric
ROW_INFO = ("Experiment", "rev", "typ", "Created", "parent", "State", "Executor")

Experiment = tuple[str, dict[str, Any], dict[str, Any]]  # name, parameters, metrics


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline compare",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("."),
                        help="the project's folder (default: the current one)")
    args = parser.parse_args(argv)

    def body() -> None:
        print(table(experiments(args.repo)), end="")

    return run_stage(body)


def experiments(repo: Path) -> list[Experiment]:
    """(name, parameters, headline metrics) of each revision and experiment that has metrics.

    exp_show's flat rows do not say which column is which: a parameter is a column under a
    top-level key of the project's params.yaml, a metric a number in one of the files under
    `reports/metrics/` (the only metrics files; DVC names a key shared by several files
    `FILE:key`), and the rest (file hashes of the stages' deps) is left out.
    """
    import dvc.api  # imported late: it takes a second
    from dvc.exceptions import DvcException

    try:
        rows = dvc.api.exp_show(repo=str(repo))
    except DvcException as err:
        raise UserError(f"{repo}: dvc exp show failed: {err}") from err
    params_file = repo / "params.yaml"
    top = set(yaml.safe_load(params_file.read_text()) or {}) if params_file.is_file() else set()
    owner = _key_owners(repo / HEADLINE)
    found = []
    for row in rows:
        params = {k: v for k, v in row.items() if k.split(".")[0] in top}
        metrics = {_metric_name(k, owner): v for k, v in row.items()
                   if k not in ROW_INFO and k not in params and isinstance(v, float)}
        if metrics:
            found.append((row["Experiment"] or row["rev"], params, metrics))
    return found


def _key_owners(folder: Path) -> dict[str, str]:
    """key -> the row (file stem) of the one metrics file in `folder` that holds it."""
    owners: dict[str, list[str]] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            keys = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for key in keys if isinstance(keys, dict) else ():
            owners.setdefault(key, []).append(path.stem)
    return {key: rows[0] for key, rows in owners.items() if len(rows) == 1}


def _metric_name(column: str, owner: dict[str, str]) -> str:
    """`reports/metrics/hmvae_kl.json:rgb` -> `hmvae_kl_rgb`; DVC leaves out the file of a
    key that only one file holds (`both_sd`), which the workspace's files tell."""
    path, _, key = column.rpartition(":")
    row = Path(path).stem if path else owner.get(key)
    return f"{row}_{key}" if row else key


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:g}" if isinstance(value, float) else str(value)


def table(found: list[Experiment]) -> str:
    if not found:
        return f"no experiment with {HEADLINE} yet (run `dvc exp run`)\n"
    keys = sorted({k for _, params, _ in found for k in params} - set(ALWAYS))
    changed = [*ALWAYS, *(k for k in keys if len({_cell(p.get(k)) for _, p, _ in found}) > 1)]
    lines = [["", *(name for name, _, _ in found)]]
    lines += [[k, *(_cell(p.get(k)) for _, p, _ in found)] for k in changed]
    means = list(dict.fromkeys(k for _, _, m in found for k in m if not k.endswith("_sd")))
    for key in means:
        cells = []
        for _, _, metrics in found:
            mean, sd = metrics.get(key), metrics.get(f"{key}_sd")
            cells.append("–" if mean is None else
                         f"{mean:.1f}" + ("" if sd is None else f"±{sd:.1f}"))
        lines.append([key, *cells])
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    return "".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
                   .rstrip() + "\n" for row in lines)
