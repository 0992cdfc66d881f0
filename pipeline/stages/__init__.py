"""One thin module per DVC stage: parse arguments, load parameters, call library code.

Each module has `main(argv) -> int`. `run_stage` turns the errors a user can cause (bad
parameters, bad input files) into one clear line on stderr and exit status 2, instead of a
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.atomic import write_text
from pipeline.config import Config, load_config
from pipeline.errors import UserError
from pipeline.imports import ROOT, code_digest

# name -> (module, one-line summary); modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "params": ("pipeline.stages.params", "check every parameter, write each section's values"),
    "download": ("pipeline.stages.download", "fetch and unpack the RGB-D dataset"),
    "preprocess": ("pipeline.stages.preprocess", "crops -> square RGB and jet depth"),
    "split": ("pipeline.stages.split", "trials (held-out instances), labelled subsets"),
    "finetune": ("pipeline.stages.finetune", "fine-tune VGG16 on a trial's labelled frames"),
    "extract": ("pipeline.stages.extract", "VGG16 fc1 features of every frame to HDF5"),
    "train": ("pipeline.stages.train", "train and evaluate one model on features file(s)"),
    "classical": ("pipeline.stages.classical", "co-training or label spreading on features"),
    "report": ("pipeline.stages.report", "Table 1: mean +- std over trials"),
    "inspect": ("pipeline.stages.inspect", "what an HDF5 file of this project holds"),
    "compare": ("pipeline.stages.compare", "DVC experiments side by side: params, Table 1"),
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


def out_folder(path: str | Path, flag: str = "--out") -> Path:
    """`path` as an output folder: refused at once when a file is in the way."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: exists and is not a folder; give a folder path")
    return path


def out_file(path: str | Path, flag: str = "--out") -> Path:
    """`path` as an output file: refused at once when a folder is in the way."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file path")
    return path


def code_stamp(out: Path, stage: str, resumable: Sequence[str], *,
               root: Path | None = None, model: str | None = None) -> None:
    """Let a checkpoint in `out` be resumed only by the code that wrote it.

    DVC keeps `persist: true` outputs when it re-runs a stage, also when the re-run is due to
    changed code; the checkpoints' own fingerprints cover parameters and data, not code. So
    `out/code.sha256` records the hash of the stage's source files (its import closure,
    `pipeline.imports`, for `model` that model's: the files its dvc.yaml deps list), and the
    files `resumable` are
    deleted when it differs. Call it before the work (a missing `out` is left alone, so bad
    input still writes nothing) and after it; a run killed before its first stamp resumes.
    """
    if not out.is_dir():
        return
    stamp = out / "code.sha256"
    current = code_digest(stage, root or ROOT, model=model)
    if stamp.is_file() and stamp.read_text().strip() != current:
        for name in resumable:
            target = out / name
            if target.is_file():
                print(f"{target}: written by other code; starting afresh", file=sys.stderr)
                target.unlink()
    write_text(stamp, current + "\n")
