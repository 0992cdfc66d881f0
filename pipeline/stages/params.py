"""`python -m pipeline params --out data/params`: check every parameter before any work.

DVC deletes a stage's outputs before it runs the stage's command, so a bad value met by a
later stage (`dvc exp run -S train.alpha=-0.5`) would cost that stage's results. This
stage comes first (`download` depends on its file, every other stage on `download`'s
outputs): it loads the parameters file as every stage does (`load_config`: every section,
the active profile, the keys dvc.yaml reads), checks every other profile's values on the
paper's, and only then writes the effective configuration, one file per section,
`--out/<section>.json`. A refused value
ends here with one line and exit status 2, and DVC runs nothing else. Editing one key
changes only its section's file (which stages re-run is the `params` lists' of dvc.yaml).
`train.models` and `classical.models` are left out: they name which stages dvc.yaml runs
and which rows the report shows, not how a model trains.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from pipeline.atomic import write_json
from pipeline.config import SECTIONS, ConfigError, load_config
from pipeline.stages import load, out_folder, run_stage, stage_parser

LEFT_OUT = {"train": ("models",), "classical": ("models",)}


def main(argv: list[str]) -> int:
    parser = stage_parser("params", __doc__.splitlines()[0])
    parser.add_argument("--out", default="data/params", type=Path, help="folder (%(default)s)")
    args = parser.parse_args(argv)

    def body() -> None:
        out = out_folder(args.out)
        effective = load(args).to_dict()  # every check first: nothing is written on refusal
        check_other_profiles(Path(args.params), effective["profile"])
        out.mkdir(parents=True, exist_ok=True)
        for section in SECTIONS:
            values = {k: v for k, v in effective[section].items()
                      if k not in LEFT_OUT.get(section, ())}
            write_json(out / f"{section}.json", values, sort_keys=True)
        print(f"parameters of profile {effective['profile']!r} checked -> {out}/")

    return run_stage(body)


def check_other_profiles(path: Path, active: str) -> None:
    """Each profile but `active`, applied to the paper's values: a bad value is refused now,
    not when that profile is next chosen."""
    profiles = (yaml.safe_load(path.read_text()) or {}).get("profiles") or {}
    for name, sections in profiles.items():
        if name == active:
            continue
        if not isinstance(sections, dict) or not all(isinstance(v, dict | None)
                                                     for v in sections.values()):
            raise ConfigError(f"{path}: profiles.{name}: expected a mapping of sections, each "
                              f"a mapping of keys, got {sections!r}")
        sets = [f"{section}.{key}={json.dumps(value)}" for section, keys in sections.items()
                for key, value in (keys or {}).items()]
        try:
            load_config(None, sets)
        except ConfigError as err:
            raise ConfigError(f"{path}: profiles.{name}.{str(err).removeprefix('--set: ')}"
                              ) from None
