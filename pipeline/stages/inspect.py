"""`python -m pipeline inspect FILE.h5 ...`: what a features, images or splits file holds."""

from __future__ import annotations

import argparse

from pipeline.stages import run_stage
from pipeline.store import describe


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline inspect", description=__doc__)
    parser.add_argument("files", nargs="+", help="HDF5 files written by this project")
    args = parser.parse_args(argv)

    def body() -> None:
        for path in args.files:
            print(describe(path))

    return run_stage(body)
