"""`python -m pipeline train --features F.h5 --model NAME --out DIR`: one model, one file.

The classical models have their own stage (`python -m pipeline classical`).
"""

from __future__ import annotations

from pathlib import Path

from pipeline import distributed
from pipeline.devices import resolve_device
from pipeline.stages import code_stamp, load, out_folder, run_stage, stage_parser
from pipeline.vae import MODELS
from pipeline.vae.experiment import model_spec, train_and_evaluate


def main(argv: list[str]) -> int:
    parser = stage_parser("train", __doc__)
    parser.add_argument("--features", required=True, type=Path, help="ssmvae-features/1 file")
    parser.add_argument("--model", required=True, help=f"one of {', '.join(MODELS)}")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    def body() -> int | None:
        model_spec(args.model)  # a bad name is one line, before any file is touched
        out_folder(args.out)
        config = load(args)
        world = distributed.world_from_env()
        relaunched = distributed.relaunch(config.launch.processes, "train", argv)
        if relaunched is not None:
            return relaunched
        device = distributed.init(world, resolve_device(config.train.device),
                                  config.launch.backend)
        _stamp(args.out, args.model, world)
        distributed.barrier(world)  # no process reads a checkpoint the stamp deletes
        metrics = train_and_evaluate(args.features, args.model, config.train, args.out,
                                     progress=not args.no_progress, world=world,
                                     device=device)
        _stamp(args.out, args.model, world)
        if world.is_main:
            accuracy = ", ".join(f"{k} {v:.3f}" for k, v in metrics["accuracy"].items())
            print(f"{args.model}: accuracy {accuracy} -> {args.out / 'metrics.json'}")
        distributed.shutdown(world)
        return None

    return run_stage(body)


def _stamp(out: Path, model: str, world: distributed.World) -> None:
    """The code stamp of a resumable checkpoint; none once there is nothing to resume."""
    if not world.is_main:
        return
    if (out / "checkpoint.pt").is_file():
        code_stamp(out, "train", ["checkpoint.pt"], model=model)
    else:
        (out / "code.sha256").unlink(missing_ok=True)
