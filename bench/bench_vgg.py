"""VGG16 fine-tuning steps and fc1 extraction on one device, against its matmul peak.

    python bench/bench_vgg.py [--device auto] [--size 148] [--batch N] [--train-batch N]
                              [--steps N] [--workers N] [--precision P] [--compare]
                              [--compile]

Prints the device's 4096^3 matmul FLOP/s (bf16 on CUDA, fp32 on CPU: the precision each
stage uses there by default; bf16 with `--precision bf16`), then one row per measurement:
images per second, FLOPs per image (counted by torch's FlopCounterMode on the meta device,
so counting costs nothing), achieved FLOP/s and its share of that peak, and the time of the
first batch (worker start, cuDNN set-up, compilation). Below the table, the time the whole
Washington RGB-D evaluation subset (41,877 frames x 2 modalities) would take at each
measured extraction rate.

- fine-tune: the stage's own `finetune._train_epoch` (Adam over all parameters; bf16
  autocast and channels-last on CUDA) on images held on the device, as the stage holds them;
- extract: the stage's own `extract.iter_features` reading a temporary images file of
  random frames through its reader processes, both modalities per batch, features copied
  back to the host (not written, which the stage overlaps with the next batch);
- `--compare` adds a plain eager reference of each (fp32, contiguous tensors, no compile,
  read in the main process) on the same data and device;
- `--compile` (CUDA only) extracts with `torch.compile` of the fc1 network; its cost shows
  in the first batch.

Random weights, 51 categories (as Washington RGB-D); rates are steady state, the first batch
excluded. Defaults are small on CPU (about two minutes) and GPU-sized on CUDA.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import PAPER_FRAMES, device_name, matmul_peak, print_table, sync, write_json
from pipeline import engine
from pipeline.config import FinetuneConfig
from pipeline.devices import autocast_dtype, resolve_device
from pipeline.features import finetune as ft
from pipeline.features import vgg
from pipeline.features.extract import auto_batch_size, auto_workers, iter_features

CLASSES = 51
MODALITIES = ("rgb", "depth")


def count_flops(size: int, *, train: bool) -> float:
    """FLOPs per image of fc1 (inference) or of a training step's forward and backward."""
    with torch.device("meta"):
        model = vgg.build_vgg16(CLASSES)
        x = torch.empty(1, 3, size, size)
        counter = FlopCounterMode(display=False)
        with counter:
            if train:
                F.cross_entropy(model(x), torch.zeros(1, dtype=torch.long)).backward()
            else:
                vgg.fc1(model, x)
    return float(counter.get_total_flops())


def timed(batches: Iterator[int], device: torch.device) -> tuple[float, float]:
    """(items per second after the first batch, seconds of the first batch), where
    `batches` yields the number of items each batch completed."""
    start = time.perf_counter()
    next(batches)
    sync(device)
    t1 = time.perf_counter()
    count = sum(batches)
    sync(device)
    return count / (time.perf_counter() - t1), t1 - start


def make_images(path: Path, frames: int, size: int, batch: int) -> None:
    """An images file of `frames` random frames, written as one repeated random block."""
    from pipeline.store import ImagesWriter

    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    with ImagesWriter(path, size=size, categories=[f"c{i}" for i in range(CLASSES)]) as w:
        for start in range(0, frames, batch):
            k = min(batch, frames - start)
            w.append(rgb=block[:k], depth=block[:k][:, ::-1], label=[0] * k,
                     frame=[f"f{start + i}" for i in range(k)], instance=["i"] * k,
                     video=[1] * k, index=list(range(start, start + k)))


def extract_optimised(images: Path, model: nn.Module, *, frames: int, args: argparse.Namespace,
                      device: torch.device) -> Iterator[int]:
    net: Callable[..., torch.Tensor] = vgg.Fc1(model)
    if args.compile:
        net = torch.compile(net)
    nets = dict.fromkeys(MODALITIES, net)  # one network twice: the speed is the same
    dtype = autocast_dtype(args.precision, device)
    for start, stop, _ in iter_features(images, nets, n=frames, image_size=args.size,
                                        batch_size=args.batch, workers=args.workers,
                                        device=device, dtype=dtype):
        yield 2 * (stop - start)


@torch.no_grad()
def extract_reference(images: Path, model: nn.Module, *, frames: int,
                      args: argparse.Namespace, device: torch.device) -> Iterator[int]:
    """torchvision-style eager inference: fp32, contiguous, read in this process."""
    with h5py.File(images, "r") as f:
        for start in range(0, frames, args.batch):
            stop = min(frames, start + args.batch)
            for m in MODALITIES:
                x = torch.from_numpy(f[m][start:stop]).to(device).permute(0, 3, 1, 2)
                x = TF.normalize(x.float().div(255), vgg.MEAN, vgg.STD).contiguous()
                vgg.fc1(model, x).cpu().numpy()
            yield 2 * (stop - start)


def train_optimised(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                    args: argparse.Namespace, device: torch.device) -> Iterator[int]:
    config = FinetuneConfig(weights="none", batch_size=args.train_batch, image_size=args.size,
                            device=str(device), precision=args.precision)
    opt = engine.adam(model, 1e-5)  # the stage's optimiser
    for epoch in range(args.steps + 1):
        k = slice(epoch * args.train_batch, (epoch + 1) * args.train_batch)
        ft._train_epoch(model, opt, images[k], labels[k], config=config, epoch=epoch,
                        device=device)
        yield args.train_batch


def train_reference(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                    args: argparse.Namespace, device: torch.device) -> Iterator[int]:
    """A plain fp32 training step: normalise, forward, cross-entropy, backward, Adam."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    model.train()
    for step in range(args.steps + 1):
        k = slice(step * args.train_batch, (step + 1) * args.train_batch)
        x = images[k].to(device).permute(0, 3, 1, 2).float().div(255)
        x = TF.normalize(x, vgg.MEAN, vgg.STD).contiguous()
        loss = F.cross_entropy(model(x), labels[k].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()  # as the stage does: a host sync per step
        yield args.train_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--size", type=int, default=148, help="image side (148 px)")
    parser.add_argument("--batch", type=int, help="extraction batch; default 8 on CPU, "
                        "extract.batch_size's auto value on CUDA")
    parser.add_argument("--train-batch", type=int,
                        help="fine-tuning batch; default 8 on CPU, 32 (the paper's) on CUDA")
    parser.add_argument("--steps", type=int, help="timed batches after the first; "
                        "default 2 on CPU, 20 on CUDA")
    parser.add_argument("--workers", type=int, help="extraction reader processes; default "
                        "extract.workers' auto value for the device")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                        help="autocast of the stages' paths, as *.precision (auto)")
    parser.add_argument("--compare", action="store_true",
                        help="also time a plain eager fp32 reference of each step")
    parser.add_argument("--json", help="also write the stages' images/s to this file "
                        "(for bench/estimate_paper.py)")
    parser.add_argument("--compile", action="store_true",
                        help="extract through torch.compile (CUDA only)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if args.compile and not cuda:
        parser.error("--compile is for CUDA only (compiling on CPU takes minutes)")
    args.batch = args.batch or (auto_batch_size(device) if cuda else 8)
    args.train_batch = args.train_batch or (32 if cuda else 8)
    args.steps = args.steps or (20 if cuda else 2)
    args.workers = auto_workers(device) if args.workers is None else args.workers

    bf16 = autocast_dtype(args.precision, device) is not None
    peak_dtype = torch.bfloat16 if bf16 else torch.float32
    peak = matmul_peak(device, peak_dtype, reps=10 if cuda else 3, warmup=2 if cuda else 1)
    precision = "bf16 autocast" if bf16 else "fp32"
    print(f"device: {device} ({device_name(device)}), torch {torch.__version__}")
    print(f"matmul 4096^3 {str(peak_dtype).removeprefix('torch.')}: {peak / 1e12:.2f} TFLOP/s "
          "(the peak below)")
    print(f"{args.size} px; extraction batch {args.batch}, {args.workers} reader processes; "
          f"fine-tuning batch {args.train_batch}; {args.steps} timed batches after the first\n")

    torch.manual_seed(0)
    model = vgg.build_vgg16(CLASSES).to(device)
    rows, rates = [], []

    def row(step: str, path: str, batch: int, flops: float, result: tuple[float, float]) -> None:
        rate, first = result
        rows.append([step, path, batch, f"{rate:.1f}", f"{flops / 1e9:.1f}",
                     f"{rate * flops / 1e12:.3f}", f"{rate * flops / peak:.1%}", f"{first:.1f}"])

    fc1_flops = count_flops(args.size, train=False)
    frames = args.batch * (args.steps + 1)
    with tempfile.TemporaryDirectory(prefix="bench_vgg") as tmp:
        images = Path(tmp) / "images.h5"
        make_images(images, frames, args.size, args.batch)
        model.eval()
        if args.compare:  # before channels-last: the reference runs on contiguous weights
            result = timed(extract_reference(images, model, frames=frames, args=args,
                                             device=device), device)
            row("extract fc1", "eager fp32 reference", args.batch, fc1_flops, result)
            rates.append(("eager fp32 reference", result[0]))
        if cuda:
            model.to(memory_format=torch.channels_last)
        path = f"{precision}{', channels-last' if cuda else ''}" \
               f"{', compiled' if args.compile else ''}, {args.workers} workers"
        result = timed(extract_optimised(images, model, frames=frames, args=args,
                                         device=device), device)
        row("extract fc1", path, args.batch, fc1_flops, result)
        rates.append((path, result[0]))
        extract_rate = result[0]

    train_flops = count_flops(args.size, train=True)
    n = args.train_batch * (args.steps + 1)
    g = torch.Generator().manual_seed(0)
    train_images = torch.randint(0, 256, (n, args.size, args.size, 3), dtype=torch.uint8,
                                 generator=g).to(device)  # the stage holds them on the GPU
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    if args.compare:
        model.to(memory_format=torch.contiguous_format)
        result = timed(train_reference(model, train_images, labels, args=args, device=device),
                       device)
        row("fine-tune step", "eager fp32 reference", args.train_batch, train_flops, result)
    if cuda:
        model.to(memory_format=torch.channels_last)
    result = timed(train_optimised(model, train_images, labels, args=args, device=device),
                   device)
    row("fine-tune step", f"{precision}{', channels-last' if cuda else ''} (the stage's)",
        args.train_batch, train_flops, result)
    write_json(args.json, {"device": device_name(device), "size": args.size,
                           "precision": precision, "finetune_images_per_s": result[0],
                           "extract_images_per_s": extract_rate})

    print_table(["step", "path", "batch", "images/s", "GFLOP/image", "TFLOP/s",
                 "share of peak", "first batch (s)"], rows)
    print(f"\nwhole evaluation subset ({PAPER_FRAMES:,} frames x 2 modalities) at the measured "
          "extraction rate:")
    for path, rate in rates:
        seconds = 2 * PAPER_FRAMES / rate
        print(f"  {path}: {seconds:,.0f} s ({seconds / 60:.1f} min)")


if __name__ == "__main__":
    main()
