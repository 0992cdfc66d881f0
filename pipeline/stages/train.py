"""`python -m pipeline train --features F.h5 --model NAME --out DIR`: one model, one file."""

from __future__ import annotations

from pathlib import Path

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

    def body() -> None:
        config = load(args)
        code = (args.out, ["vae", "store.py"], ["checkpoint.pt"])
        code_stamp(*code)
        metrics = train_and_evaluate(args.features, args.model, config.train, args.out,
                                     progress=not args.no_progress)
        code_stamp(*code)
        accuracy = ", ".join(f"{k} {v:.3f}" for k, v in metrics["accuracy"].items())
        print(f"{args.model}: accuracy {accuracy} -> {args.out / 'metrics.json'}")

    return run_stage(body)
