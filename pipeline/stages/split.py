"""`python -m pipeline split --images data/images.h5 --trials-file ... --out data/splits.h5`.

Lai et al.'s trials (held-out instances from `testinstance_ids.txt`) and, within each trial's
training frames, the seeded stratified labelled subset (`split.labeled_fraction`). Writes
`ssmvae-splits/1` aligned row by row with the images file, and `<out>-config.json`.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.rgbd.splits import make_splits, read_trials
from pipeline.stages import load, run_stage, stage_parser
from pipeline.store import read_images_index, write_splits


def main(argv: list[str]) -> int:
    parser = stage_parser("split", __doc__.splitlines()[2])
    parser.add_argument("--images", default="data/images.h5", help="images file")
    parser.add_argument("--trials-file", default="data/raw/testinstance_ids.txt",
                        help="testinstance_ids.txt")
    parser.add_argument("--out", default="data/splits.h5", help="splits file to write")
    args = parser.parse_args(argv)

    def body() -> None:
        config = load(args)
        cfg = config.split
        index = read_images_index(args.images)
        trials = read_trials(args.trials_file)
        splits = make_splits(trials, cfg.trials, instance=index.instance, label=index.label,
                             labeled_fraction=cfg.labeled_fraction, seed=cfg.seed,
                             source=args.trials_file)
        out = Path(args.out)
        write_splits(out, frames=index.frame, splits=splits,
                     attrs={"labeled_fraction": cfg.labeled_fraction, "seed": cfg.seed})
        config.dump(out.with_name(out.stem + "-config.json"))
        for s in splits:
            print(f"trial {s.trial}: {int(s.is_test.sum())} test, "
                  f"{int((~s.is_test).sum())} train, {int(s.is_labeled.sum())} labelled")

    return run_stage(body)
