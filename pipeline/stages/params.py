"""`python -m pipeline params --out data/params`: check every parameter before any work.

DVC deletes a stage's outputs before it runs the stage's command, so a bad value met by a
later stage (`dvc exp run -S train.alpha=-0.5`) would cost that stage's results. This
stage comes first (every other stage depends on one of its files): it loads the parameters
file as every stage does (`load_config`: every section, the active profile, the keys
dvc.yaml reads) and only then writes the effective configuration, one file per section,
`--out/<section>.json`. A refused value ends here with one line and exit status 2, and
DVC runs nothing else. Editing one key changes only its section's file, so only the stages
of that section run again. `train.models` and `classical.models` are left out: they name
which stages dvc.yaml runs and which rows the report shows, not how a model trains.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.atomic import write_json
from pipeline.config import SECTIONS
from pipeline.stages import load, out_folder, run_stage, stage_parser

LEFT_OUT = {"train": ("models",), "classical": ("models",)}


def main(argv: list[str]) -> int:
    parser = stage_parser("params", __doc__.splitlines()[0])
    parser.add_argument("--out", default="data/params", type=Path, help="folder (%(default)s)")
    args = parser.parse_args(argv)

    def body() -> None:
        out = out_folder(args.out)
        effective = load(args).to_dict()  # every check first: nothing is written on refusal
        out.mkdir(parents=True, exist_ok=True)
        for section in SECTIONS:
            values = {k: v for k, v in effective[section].items()
                      if k not in LEFT_OUT.get(section, ())}
            write_json(out / f"{section}.json", values, sort_keys=True)
        print(f"parameters of profile {effective['profile']!r} checked -> {out}/")

    return run_stage(body)
