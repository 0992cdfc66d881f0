"""`python -m pipeline train --features F.h5 --model NAME --out DIR`: one model, one file.

Several files and as many folders (`--features F1 F2 ... --out D1 D2 ...`) train one run per
file at once, with stacked parameters (`pipeline/vae/stacked.py`): the same model and
parameters on each file, each folder written as a single run would write it.
The classical models (`ct_svm`, `cotraining`, `label_spreading`: `pipeline/classical`) take
the same arguments and write the same files, in one process, one file after another.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import distributed
from pipeline.classical import CLASSICAL
from pipeline.devices import resolve_device
from pipeline.errors import UserError
from pipeline.stages import code_stamp, load, out_folder, run_stage, stage_parser
from pipeline.vae import MODELS
from pipeline.vae.experiment import train_and_evaluate, train_and_evaluate_stacked


def main(argv: list[str]) -> int:
    parser = stage_parser("train", __doc__)
    parser.add_argument("--features", required=True, type=Path, nargs="+",
                        help="ssmvae-features/1 file(s); several train stacked runs")
    parser.add_argument("--model", required=True, help=f"one of {', '.join([*MODELS, *CLASSICAL])}")
    parser.add_argument("--out", required=True, type=Path, nargs="+",
                        help="output folder(s), one per features file")
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
        world = distributed.world_from_env()
        if len(args.features) > 1 and (world.distributed or config.launch.processes > 1):
            raise UserError("stacked runs (several --features) train in one process; "
                            "use launch.processes: 1")
        relaunched = distributed.relaunch(config.launch.processes, "train", argv)
        if relaunched is not None:
            return relaunched
        device = distributed.init(world, resolve_device(config.train.device),
                                  config.launch.backend)
        stamps = [(out, "train", ["checkpoint.pt"]) for out in args.out]
        if world.is_main:
            for out, *rest in stamps:
                if (out / "checkpoint.pt").is_file():  # stacked runs keep theirs
                    code_stamp(out, *rest)
                else:  # nothing left to resume: its stamp goes too
                    (out / "code.sha256").unlink(missing_ok=True)
        distributed.barrier(world)  # no process reads a checkpoint the stamp deletes
        if len(args.features) == 1:
            runs = [train_and_evaluate(args.features[0], args.model, config.train, args.out[0],
                                       progress=not args.no_progress, world=world,
                                       device=device)]
        else:
            runs = train_and_evaluate_stacked(args.features, args.model, config.train,
                                              args.out, progress=not args.no_progress)
        if world.is_main:
            for out, *rest in stamps:
                if (out / "checkpoint.pt").is_file():  # stacked runs keep theirs
                    code_stamp(out, *rest)
                else:  # nothing left to resume: its stamp goes too
                    (out / "code.sha256").unlink(missing_ok=True)
            for out, metrics in zip(args.out, runs, strict=True):
                accuracy = ", ".join(f"{k} {v:.3f}" for k, v in metrics["accuracy"].items())
                print(f"{args.model}: accuracy {accuracy} -> {out / 'metrics.json'}")
        distributed.shutdown(world)
        return None

    return run_stage(body)


def _classical(args, config) -> None:
    """The classical models (pipeline/classical): one process, one file after another."""
    from pipeline.classical.experiment import train_and_evaluate_classical

    if distributed.world_from_env().distributed:
        raise UserError(f"--model {args.model}: the classical models run in one process; "
                        "start the stage without torchrun")
    for features, out in zip(args.features, args.out, strict=True):
        metrics = train_and_evaluate_classical(features, args.model, config.classical, out,
                                               progress=not args.no_progress)
        accuracy = ", ".join(f"{k} {v:.3f}" for k, v in metrics["accuracy"].items())
        print(f"{args.model}: accuracy {accuracy} -> {out / 'metrics.json'}")
