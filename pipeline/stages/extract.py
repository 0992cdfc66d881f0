"""`python -m pipeline extract --trial K`: VGG16 fc1 features of every frame to HDF5.

Reads the fine-tuned checkpoints `--checkpoints/trial-K-rgb/model.pt` and
`.../trial-K-depth/model.pt` and writes `--out` (default `data/features/trial-K.h5`) in the
`ssmvae-features/1` schema, with the trial's masks and the provenance of the features.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.features.extract import extract_features
from pipeline.features.finetune import MODALITIES
from pipeline.stages import load, out_file, run_stage, stage_parser
from pipeline.store import describe


def main(argv: list[str]) -> int:
    parser = stage_parser("extract", __doc__)
    parser.add_argument("--images", default="data/images.h5", help="images file (%(default)s)")
    parser.add_argument("--splits", default="data/splits.h5", help="splits file (%(default)s)")
    parser.add_argument("--trial", type=int, required=True, help="trial number")
    parser.add_argument("--checkpoints", default="models/vgg16",
                        help="folder of finetune outputs (%(default)s)")
    parser.add_argument("--out", help="features file (data/features/trial-K.h5)")
    args = parser.parse_args(argv)

    def body() -> None:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        config = load(args)
        out = out_file(args.out or f"data/features/trial-{args.trial}.h5")
        checkpoints = {m: Path(args.checkpoints) / f"trial-{args.trial}-{m}" / "model.pt"
                       for m in MODALITIES}
        extract_features(images=args.images, splits=args.splits, trial=args.trial,
                         checkpoints=checkpoints, out=out, config=config.extract)
        config.dump(out.with_name(f"{out.stem}.config.json"))
        print(describe(out))

    return run_stage(body)
