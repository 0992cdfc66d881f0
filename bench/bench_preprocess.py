"""Preprocessing throughput: frames per second on this machine, and the time for ~42k frames.

    python bench/bench_preprocess.py [--frames-per-video 8] [--size 148] [--workers 0]
        [--upscale 2]

Generates a synthetic set (Washington layout) once into a temporary folder, optionally
upscales its crops (real evaluation crops are larger than the synthetic ones), then times
`preprocess_dataset` end to end: reading PNGs, hole filling, jet, resizing, HDF5 writing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.images import preprocess_dataset
from pipeline.rgbd.download import extract_zip
from pipeline.rgbd.synthetic import SyntheticSpec, generate

REAL_FRAMES = 41_877  # roughly the evaluation subset (every 5th frame)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames-per-video", type=int, default=8)
    parser.add_argument("--size", type=int, default=148)
    parser.add_argument("--workers", type=int, default=0, help="0 = one per core")
    parser.add_argument("--upscale", type=float, default=2.0,
                        help="scale the synthetic crops by this factor first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec = SyntheticSpec(categories=8, instances=2, frames=args.frames_per_video)
        generate(spec, folder / "a.zip", folder / "ids.txt")
        extract_zip(folder / "a.zip", folder / "raw")
        pixels = []
        for path in (folder / "raw").rglob("*crop.png"):
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if args.upscale != 1:
                image = cv2.resize(image, None, fx=args.upscale, fy=args.upscale,
                                   interpolation=cv2.INTER_NEAREST)
                cv2.imwrite(str(path), image)
            pixels.append(image.shape[0] * image.shape[1])
        start = time.perf_counter()
        report = preprocess_dataset(folder / "raw", folder / "images.h5", size=args.size,
                                    workers=args.workers)
        seconds = time.perf_counter() - start
    fps = report.written / seconds
    mean_side = (sum(pixels) / len(pixels)) ** 0.5
    print(f"{report.written} frames (mean crop ~{mean_side:.0f} px square) at {args.size} px "
          f"in {seconds:.1f} s: {fps:.1f} frames/s")
    print(f"extrapolated for {REAL_FRAMES} frames: {REAL_FRAMES / fps / 60:.1f} min")


if __name__ == "__main__":
    main()
