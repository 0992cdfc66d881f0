"""`predict` throughput end to end: decode + preprocess + VGG16 fc1 + the model, frames/s.

    python bench/bench_predict.py [--size 148] [--frames 64] [--model ss_hmvae_kl]
        [--inputs rgb depth] [--batch-size 0] [--device auto]

Builds a throw-away project in a temporary folder through the stage commands (the synthetic
set, VGG16 from random weights fine-tuned for one epoch at `--size` px, the paper's model
sizes trained for one epoch: the weights' values do not change the cost), then predicts a
folder of `--frames` copies of the two real Washington frames of `../shared/fixtures`
(real crop sizes, real 16-bit depth) the way `python -m pipeline predict` does, after one
warm-up batch. Loading the networks is timed apart.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import device_name, sync  # noqa: E402
from pipeline.__main__ import main as cli  # noqa: E402
from pipeline.devices import resolve_device  # noqa: E402
from pipeline.features.extract import auto_batch_size  # noqa: E402
from pipeline.predict import collect, load_predictor, predict_frames  # noqa: E402
from pipeline.vae.saved import choose  # noqa: E402

FIXTURES = ROOT.parent / "shared" / "fixtures" / "washington-rgbd" / "apple" / "apple_1"


def build_project(root: Path, size: int, model: str, device: str) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"], params["trials"] = "demo", [1]
    params["profiles"]["demo"] = {
        "download": {"source": "synthetic", "synthetic_categories": 3,
                     "synthetic_instances": 2, "synthetic_frames": 1},
        "preprocess": {"size": size}, "split": {"trials": [1], "labeled_fraction": 0.3},
        "finetune": {"weights": "none", "epochs": 1, "image_size": size, "batch_size": 8,
                     "checkpoint_every": 2, "device": device},
        "extract": {"device": device},
        "train": {"epochs": 1, "device": device},  # the paper's sizes: 1024-unit layers
        "classical": {}, "report": {}, "launch": {},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    os.chdir(root)
    steps = [["download", "--no-progress"],
             ["preprocess", "--raw", "data/raw", "--out", "data/images.h5", "--no-progress"],
             ["split", "--images", "data/images.h5", "--trials-file",
              "data/raw/testinstance_ids.txt", "--out", "data/splits.h5"],
             *[["finetune", "--trial", "1", "--modality", m, "--out",
                f"models/vgg16/trial-1-{m}"] for m in ("rgb", "depth")],
             ["extract", "--trial", "1"],
             ["train", "--features", "data/features/trial-1.h5", "--model", model, "--out",
              f"models/vae/{model}/trial-1", "--no-progress"]]
    for step in steps:
        if cli(step) != 0:
            raise SystemExit(f"building the project failed at {step[0]}")
    return root / "models" / "vae" / model / "trial-1"


def frames_folder(folder: Path, n: int) -> Path:
    """`n` frames: the two real ones, copied under distinct frame numbers."""
    folder.mkdir(parents=True)
    for k in range(n):
        source = ("apple_1_1_1", "apple_1_1_6")[k % 2]
        for kind in ("crop", "depthcrop"):
            shutil.copy(FIXTURES / f"{source}_{kind}.png", folder / f"apple_1_1_{k}_{kind}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=148, help="image size, px (the paper's)")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--model", default="ss_hmvae_kl")
    parser.add_argument("--inputs", nargs="+", default=["rgb", "depth"])
    parser.add_argument("--batch-size", type=int, default=0, help="0 = as the extract stage")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    batch = args.batch_size or auto_batch_size(device)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_project(Path(tmp), args.size, args.model, args.device)
        folder = frames_folder(Path(tmp) / "frames", args.frames)
        start = time.perf_counter()
        predictor = load_predictor(model_dir, args.inputs, device=device)
        loading = time.perf_counter() - start
        evaluation = choose(predictor.classifier, tuple(args.inputs))
        given = [folder if m in args.inputs else None for m in ("rgb", "depth")]
        frames, _ = collect(*given)
        predict_frames(predictor, frames[:batch], evaluation, batch_size=batch)  # warm-up
        sync(device)
        start = time.perf_counter()
        predictions, errors = predict_frames(predictor, frames, evaluation, batch_size=batch)
        sync(device)
        seconds = time.perf_counter() - start
    assert len(predictions) == args.frames and not errors, errors
    fps = args.frames / seconds
    print(f"{device_name(device)}, torch {torch.__version__}: {args.model}, "
          f"{'+'.join(args.inputs)} ({evaluation.method}), {args.size} px, batch {batch}")
    print(f"loading the model and {len(args.inputs)} VGG16 network(s): {loading:.1f} s")
    print(f"{args.frames} frames in {seconds:.2f} s: {fps:.2f} frames/s = "
          f"{fps * len(args.inputs):.2f} images/s end to end "
          "(decode + preprocess + VGG16 fc1 + model)")


if __name__ == "__main__":
    main()
