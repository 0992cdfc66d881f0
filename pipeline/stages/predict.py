"""`python -m pipeline predict --model DIR --rgb FILE_OR_DIR [--depth FILE_OR_DIR]`.

Classifies new frames with a model folder written by `train` (`DIR/model.pt`) and the trial's
fine-tuned VGG16 networks: RGB alone, depth alone or both, each the way the model's row of
Table 1 does (`pipeline/predict.py`). Prints a table and writes `--out` (JSON). Files that
cannot be used are listed, one line each, and make the exit status 2; the others are still
predicted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.devices import resolve_device
from pipeline.features.extract import auto_batch_size
from pipeline.predict import run, table, write_json
from pipeline.stages import run_stage
from pipeline.vae.saved import PREFERENCE


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline predict", description=__doc__)
    parser.add_argument("--model", required=True, type=Path,
                        help="a model folder of the train stage, e.g. "
                             "models/vae/ss_hmvae_kl/trial-1")
    parser.add_argument("--rgb", type=Path, help="an RGB image, or a folder of *_crop.png")
    parser.add_argument("--depth", type=Path,
                        help="a 16-bit depth image, or a folder of *_depthcrop.png")
    parser.add_argument("--top", type=int, default=5, help="categories shown (%(default)s)")
    parser.add_argument("--out", type=Path, default=Path("predictions.json"),
                        help="JSON file of the predictions (%(default)s)")
    parser.add_argument("--method", choices=PREFERENCE,
                        help="how to classify from one modality (default: the model's best: "
                             "joint, unimodal encoder, iterative sampling, zero-fill)")
    parser.add_argument("--vgg16", type=Path,
                        help="folder of the finetune outputs (default: models/vgg16 beside "
                             "the model folder's models/vae)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (%(default)s)")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="frames per VGG16 pass; 0 = as the extract stage (%(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    def body() -> int:
        device = resolve_device(args.device)
        folder = any(p is not None and p.is_dir() for p in (args.rgb, args.depth))
        result = run(args.model, rgb=args.rgb, depth=args.depth, top=args.top,
                     method=args.method, vgg16_dir=args.vgg16, device=device,
                     batch_size=args.batch_size or auto_batch_size(device),
                     progress=folder and not args.no_progress)
        if result.predictions:
            print(table(result))
        write_json(result, args.out)
        for file, reason in result.errors:
            print(f"error: {file}: {reason}", file=sys.stderr)
        print(f"{len(result.predictions)} frame(s) predicted, {len(result.errors)} file(s) "
              f"not usable -> {args.out}", file=sys.stderr)
        return 2 if result.errors else 0

    return run_stage(body)
