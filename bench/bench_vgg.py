"""Images per second of VGG16 fc1 extraction and of a fine-tuning step (Adam, all parameters).

    python bench/bench_vgg.py [--size 148] [--batch 32] [--steps 3] [--device cpu cuda]

Runs the project's own code paths (`extract.features_of`, `finetune._train_epoch`) on random
images with randomly initialised weights (51 categories, as Washington RGB-D). On CPU it
also measures bf16 autocast extraction and its error against fp32, which decides whether
`extract.precision: bf16` is acceptable there. Devices default to cpu, plus cuda when present.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from tqdm import tqdm

from pipeline.config import FinetuneConfig
from pipeline.features import finetune as ft
from pipeline.features import vgg
from pipeline.features.extract import features_of


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_extract(model, images, *, size, device, dtype, steps) -> tuple[float, np.ndarray]:
    out = features_of(model, images, image_size=size, device=device, dtype=dtype)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        out = features_of(model, images, image_size=size, device=device, dtype=dtype)
    _sync(device)
    return steps * len(images) / (time.perf_counter() - start), out


def bench_step(model, images, labels, *, size, batch, device, steps) -> float:
    config = FinetuneConfig(weights="none", batch_size=batch, image_size=size, device=str(device))
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    with tqdm(disable=True) as bar:
        # warm-up: one step allocates Adam's state
        ft._train_epoch(model, opt, images[:batch], labels[:batch], config=config, epoch=0,
                        device=device, bar=bar)
        _sync(device)
        start = time.perf_counter()
        ft._train_epoch(model, opt, images, labels, config=config, epoch=1, device=device,
                        bar=bar)
        _sync(device)
    return len(labels) / (time.perf_counter() - start)


def run(device: torch.device, args: argparse.Namespace) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {device} ({name}), threads {torch.get_num_threads()}, "
          f"{args.size} px, batch {args.batch}")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    torch.manual_seed(0)
    model = vgg.build_vgg16(51).to(device).eval()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    default = vgg.autocast_dtype("auto", device)
    rate, ref = bench_extract(model, images, size=args.size, device=device, dtype=None,
                              steps=args.steps)
    print(f"  extract fp32: {rate:8.1f} images/s")
    if default is None:  # CPU: is bf16 fast, and accurate enough?
        rate, low = bench_extract(model, images, size=args.size, device=device,
                                  dtype=torch.bfloat16, steps=args.steps)
        err = np.abs(low - ref)
        rows = np.linalg.norm(low - ref, axis=1) / np.linalg.norm(ref, axis=1)
        print(f"  extract bf16: {rate:8.1f} images/s; vs fp32: max |diff| / max |fp32| = "
              f"{err.max() / np.abs(ref).max():.2e}, max per-image relative L2 error = "
              f"{rows.max():.2e}")
    else:
        rate, _ = bench_extract(model, images, size=args.size, device=device, dtype=default,
                                steps=args.steps)
        print(f"  extract bf16 autocast: {rate:8.1f} images/s")
    n = args.batch * args.steps
    train = torch.from_numpy(rng.integers(0, 256, (n, args.size, args.size, 3), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 51, n))
    rate = bench_step(model, train, labels, size=args.size, batch=args.batch, device=device,
                      steps=args.steps)
    print(f"  fine-tune step ({'bf16 autocast' if default else 'fp32'}, Adam): "
          f"{rate:8.1f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=148)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed batches per measurement")
    parser.add_argument("--device", nargs="+",
                        default=["cpu", *(["cuda"] if torch.cuda.is_available() else [])])
    args = parser.parse_args()
    for name in args.device:
        run(torch.device(name), args)


if __name__ == "__main__":
    main()
