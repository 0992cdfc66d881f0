"""One thin module per DVC stage: parse arguments, load parameters, call library code.

Each module has `main(argv) -> int`. `run_stage` turns the errors a user can cause (bad
parameters, bad input files) into one clear line on stderr and exit status 2, instead of a
traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.config import Config, load_config
from pipeline.errors import UserError

# name -> (module, one-line summary); modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "download": ("pipeline.stages.download", "fetch and unpack the RGB-D dataset"),
    "preprocess": ("pipeline.stages.preprocess", "crops -> square RGB and jet depth"),
    "split": ("pipeline.stages.split", "trials (held-out instances), labelled subsets"),
    "finetune": ("pipeline.stages.finetune", "fine-tune VGG16 on a trial's labelled frames"),
    "extract": ("pipeline.stages.extract", "VGG16 fc1 features of every frame to HDF5"),
    "train": ("pipeline.stages.train", "train and evaluate one model on features file(s)"),
    "report": ("pipeline.stages.report", "Table 1: mean +- std over trials"),
    "inspect": ("pipeline.stages.inspect", "what an HDF5 file of this project holds"),
    "predict": ("pipeline.stages.predict", "classify new RGB-D frames with a trained model"),
}


def stage_parser(name: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m pipeline {name}", description=description)
    parser.add_argument("--params", default="params.yaml",
                        help="parameters file (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a parameter, e.g. train.alpha=0.5")
    return parser


def load(args: argparse.Namespace) -> Config:
    return load_config(args.params, args.overrides)


def run_stage(body: Callable[[], int | None]) -> int:
    """Run a stage body; user errors become one line on stderr and exit status 2."""
    try:
        return body() or 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def code_stamp(out: Path, packages: Sequence[str], resumable: Sequence[str]) -> None:
    """Let a checkpoint in `out` be resumed only by the code that wrote it.

    DVC keeps `persist: true` outputs when it re-runs a stage, also when the re-run is due to
    changed code; the checkpoints' own fingerprints cover parameters and data, not code. So
    `out/code.sha256` records the hash of the package sources, and the files `resumable` are
    deleted when it differs. Call it before the work (a missing `out` is left alone, so bad
    input still writes nothing) and after it; a run killed before its first stamp resumes.
    """
    if not out.is_dir():
        return
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for package in packages:
        for path in sorted((root / package).glob("*.py") if (root / package).is_dir()
                           else [root / package]):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    stamp, current = out / "code.sha256", digest.hexdigest()
    if stamp.is_file() and stamp.read_text().strip() != current:
        for name in resumable:
            target = out / name
            if target.is_file():
                print(f"{target}: written by other code; starting afresh", file=sys.stderr)
                target.unlink()
    stamp.write_text(current + "\n")
