"""`python -m pipeline train --features F.h5 --model NAME --out DIR`: one model, one file."""

from __future__ import annotations

from pathlib import Path

from pipeline import distributed
from pipeline.devices import resolve_device
from pipeline.stages import code_stamp, load, run_stage, stage_parser
from pipeline.vae import MODELS
from pipeline.vae.experiment import train_and_evaluate


def main(argv: list[str]) -> int:
    parser = stage_parser("train", __doc__)
    parser.add_argument("--features", required=True, type=Path, help="ssmvae-features/1 file")
    parser.add_argument("--model", required=True, help=f"one of {', '.join(MODELS)}")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    def body() -> int | None:
        config = load(args)
        relaunched = distributed.relaunch(config.launch.processes, "train", argv)
        if relaunched is not None:
            return relaunched
        world = distributed.world_from_env()
        device = distributed.init(world, resolve_device(config.train.device),
                                  config.launch.backend)
        code = (args.out, ["vae", "store.py"], ["checkpoint.pt"])
        if world.is_main:
            code_stamp(*code)
        distributed.barrier(world)  # no process reads a checkpoint the stamp deletes
        metrics = train_and_evaluate(args.features, args.model, config.train, args.out,
                                     progress=not args.no_progress, world=world, device=device)
        if world.is_main:
            code_stamp(*code)
            accuracy = ", ".join(f"{k} {v:.3f}" for k, v in metrics["accuracy"].items())
            print(f"{args.model}: accuracy {accuracy} -> {args.out / 'metrics.json'}")
        distributed.shutdown(world)
        return None

    return run_stage(body)
