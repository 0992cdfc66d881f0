"""`python -m pipeline classical --features F.h5 --model NAME --out DIR`: one classical peer.

The classical models (`classical.models`: `ct_svm`, `cotraining`, `label_spreading`;
`pipeline/classical`) train no network: one process, no torchrun, no `train` parameter.
They write what a `train` run writes (`metrics.json`, `config.json`, `dvclive/`, `model.pt`).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.classical import CLASSICAL
from pipeline.stages import load, out_folder, run_stage, stage_parser


def main(argv: list[str]) -> int:
    parser = stage_parser("classical", __doc__.splitlines()[0])
    parser.add_argument("--features", required=True, type=Path, help="ssmvae-features/1 file")
    parser.add_argument("--model", required=True, help=f"one of {', '.join(CLASSICAL)}")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    def body() -> None:
        from pipeline.classical.experiment import train_and_evaluate_classical

        out = out_folder(args.out)
        config = load(args)
        metrics = train_and_evaluate_classical(args.features, args.model, config.classical, out,
                                               progress=not args.no_progress)
        accuracy = ", ".join(f"{k} {v:.3f}" for k, v in metrics["accuracy"].items())
        print(f"{args.model}: accuracy {accuracy} -> {out / 'metrics.json'}")

    return run_stage(body)
