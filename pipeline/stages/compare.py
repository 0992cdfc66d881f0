"""`python -m pipeline compare`: the experiments side by side, α, β and Table 1, transposed.

`dvc exp show` puts one experiment per line and every number in a column: Table 1 alone is
over twenty columns, wider than a terminal. This prints one experiment per column instead:
first the parameters that differ between the experiments shown (always `train.alpha` and
`train.beta`), then each headline metric (`reports/metrics/<row>.json`'s `<input>`) as
`<row>_<input>`, `mean±sd`. It reads `dvc exp show --json` (run here, or `--json FILE`,
`-` for stdin); experiments without metrics (queued, failed) are left out. Each column is
about 12 characters wide: 14 experiments fit in 200 columns.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.stages import run_stage

HEADLINE = "reports/metrics/"  # one file per row of Table 1: <row>.json
ALWAYS = ("train.alpha", "train.beta")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline compare",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="saved `dvc exp show --json` output "
                        "('-': stdin); default: run it")
    args = parser.parse_args(argv)

    def body() -> None:
        print(table(experiments(_shown(args.json))), end="")

    return run_stage(body)


def _shown(path: Path | None) -> Any:
    if path is None:
        proc = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise UserError(f"dvc exp show --json failed: {proc.stderr.strip()[-500:]}")
        text, where = proc.stdout, "dvc exp show --json"
    else:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
        where = str(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: not the JSON of dvc exp show ({err})") from err


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def experiments(shown: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, params.yaml flattened, headline metrics) of each revision and experiment."""
    found = []

    def walk(entry: dict[str, Any]) -> None:
        data = entry.get("data") or {}
        metrics = {f"{Path(name).stem}_{key}": value
                   for name, body in (data.get("metrics") or {}).items()
                   if name.startswith(HEADLINE)
                   for key, value in ((body or {}).get("data") or {}).items()}
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        if metrics:
            rev = str(entry.get("rev", "?"))
            name = entry.get("name") or (rev if rev == "workspace" else rev[:7])
            found.append((name, _flat(params), metrics))
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs") or []:
                walk(rev)

    for entry in shown:
        walk(entry)
    return found


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else json.dumps(value, separators=(",", ":"))


def table(found: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> str:
    if not found:
        return f"no experiment with {HEADLINE} yet (run `dvc exp run`)\n"
    keys = sorted({k for _, params, _ in found for k in params} - set(ALWAYS))
    changed = [*ALWAYS, *(k for k in keys if len({json.dumps(p.get(k)) for _, p, _ in
                                                   found}) > 1)]
    lines = [["", *(name for name, _, _ in found)]]
    lines += [[k, *(_number(p.get(k, "–")) for _, p, _ in found)] for k in changed]
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
