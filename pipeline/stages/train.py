"""`python -m pipeline train --features F.h5 --model NAME --out DIR`: one model, one file.

The classical models (`ct_svm`, `cotraining`, `label_spreading`: `pipeline/classical`) take
the same arguments and write the same files, in one process; they alone take several
features files and as many folders, one after another.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import distributed
from pipeline.classical import CLASSICAL
from pipeline.devices import resolve_device
from pipeline.errors import UserError
from pipeline.stages import code_stamp, load, out_folder, run_stage, stage_parser
from pipeline.vae import MODELS
from pipeline.vae.experiment import train_and_evaluate


def main(argv: list[str]) -> int:
    parser = stage_parser("train", __doc__)
    parser.add_argument("--features", required=True, type=Path, nargs="+",
                        help="ssmvae-features/1 file (the classical models: one or more)")
    parser.add_argument("--model", required=True, help=f"one of {', '.join([*MODELS, *CLASSICAL])}")
    parser.add_argument("--out", required=True, type=Path, nargs="+",
                        help="output folder, one per features file")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    def body() -> int | None:
        if len(args.features) != len(args.out):
            raise UserError(f"--features and --out: got {len(args.features)} features file(s) "
                            f"and {len(args.out)} output folder(s); give one --out per "
                            "--features")
        for out in args.out:
            out_folder(out)
        config = load(args)
        if args.model in CLASSICAL:
            return _classical(args, config)
        if len(args.features) > 1:
            raise UserError(f"--features: model {args.model!r} trains on one features file "
                            f"per run, got {len(args.features)}")
        (features,), (out,) = args.features, args.out
        world = distributed.world_from_env()
        relaunched = distributed.relaunch(config.launch.processes, "train", argv)
        if relaunched is not None:
            return relaunched
        device = distributed.init(world, resolve_device(config.train.device),
                                  config.launch.backend)
        _stamp(out, world)
        distributed.barrier(world)  # no process reads a checkpoint the stamp deletes
        metrics = train_and_evaluate(features, args.model, config.train, out,
                                     progress=not args.no_progress, world=world,
                                     device=device)
        _stamp(out, world)
        if world.is_main:
            accuracy = ", ".join(f"{k} {v:.3f}" for k, v in metrics["accuracy"].items())
            print(f"{args.model}: accuracy {accuracy} -> {out / 'metrics.json'}")
        distributed.shutdown(world)
        return None

    return run_stage(body)


def _stamp(out: Path, world: distributed.World) -> None:
    """The code stamp of a resumable checkpoint; none once there is nothing to resume."""
    if not world.is_main:
        return
    if (out / "checkpoint.pt").is_file():
        code_stamp(out, "train", ["checkpoint.pt"])
    else:
        (out / "code.sha256").unlink(missing_ok=True)


def _classical(args, config) -> None:
    """The classical models (pipeline/classical): one process, one file after another."""
    from pipeline.classical.experiment import train_and_evaluate_classical

    if distributed.world_from_env().distributed:
        raise UserError(f"--model {args.model}: the classical models run in one process; "
                        "start the stage without torchrun")
    for features, out in zip(args.features, args.out, strict=True):
        metrics = train_and_evaluate_classical(features, args.model, config.train, out,
                                               progress=not args.no_progress)
        accuracy = ", ".join(f"{k} {v:.3f}" for k, v in metrics["accuracy"].items())
        print(f"{args.model}: accuracy {accuracy} -> {out / 'metrics.json'}")
