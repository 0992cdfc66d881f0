"""One thin module per DVC stage: parse arguments, load parameters, call library code.

Each module has `main(argv) -> int`. `run_stage` turns the errors a user can cause (bad
parameters, bad input files) into one clear line on stderr and exit status 2, instead of a
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from pipeline.config import Config, load_config
from pipeline.errors import UserError

# name -> (module, one-line summary); modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "download": ("pipeline.stages.download", "fetch and unpack the RGB-D dataset"),
    "preprocess": ("pipeline.stages.preprocess", "crops -> square RGB and jet depth"),
    "split": ("pipeline.stages.split", "trials (held-out instances), labelled subsets"),
    "finetune": ("pipeline.stages.finetune", "fine-tune VGG16 on a trial's labelled frames"),
    "extract": ("pipeline.stages.extract", "VGG16 fc1 features of every frame to HDF5"),
    "train": ("pipeline.stages.train", "train and evaluate one model on a features file"),
    "report": ("pipeline.stages.report", "Table 1: mean +- std over trials"),
    "inspect": ("pipeline.stages.inspect", "what an HDF5 file of this project holds"),
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
