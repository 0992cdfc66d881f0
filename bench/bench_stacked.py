"""Throughput of N stacked runs (`fit_stacked`) against the same N runs one after another.

For each size and N in --runs: N runs of one model, each on its own random data of the same
shape (`--steps` steps of `batch` labelled + `batch` unlabelled examples, one epoch), trained
with `fit` one after another and then with `fit_stacked`; examples/s counts both batches of
every run. Model building and data creation are not timed; a one-step warm-up of each path
precedes the timings, and each timing is the fastest of --repeats (interleaved).
Sizes: "paper" (4096-d rgb and depth, ss_hmvae_kl, hidden/a/z 1024, batch 128 + 128) and
"small" (64-d, hidden/a/z 64, batch 64 + 64).

    python bench/bench_stacked.py [--device auto] [--sizes paper small] [--runs 1 2 4]
                                  [--steps 3] [--repeats 3] [--precision fp32]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import TrainConfig
from pipeline.devices import resolve_device
from pipeline.vae import build_model
from pipeline.vae.data import FeatureScaler, TrialData
from pipeline.vae.objective import Batch
from pipeline.vae.stacked import fit_stacked
from pipeline.vae.training import FitSettings, fit

CLASSES = 51


@dataclass(frozen=True)
class Size:
    dim: int
    width: int  # hidden, a_dim and z_dim
    batch: int  # labelled and unlabelled examples per step


SIZES = {"paper": Size(4096, 1024, 128), "small": Size(64, 64, 64)}


def trial(size: Size, steps: int, seed: int, device: torch.device) -> TrialData:
    g = torch.Generator().manual_seed(seed)

    def batch(n: int, labelled: bool) -> Batch:
        x = {m: torch.randn(n, size.dim, generator=g).to(device) for m in ("rgb", "depth")}
        y = torch.randint(0, CLASSES, (n,), generator=g).to(device) if labelled else None
        return Batch(x, y)

    scaler = FeatureScaler("gaussian", {}, {})
    return TrialData(labelled=batch(size.batch, True), unlabelled=batch(steps * size.batch,
                                                                        False),
                     test=batch(2, True), scaler=scaler,
                     categories=[str(c) for c in range(CLASSES)], modalities=["rgb", "depth"])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(model_name: str, cfg: TrainConfig, datas: list[TrialData], settings: FitSettings,
            stacked: bool, device: torch.device) -> float:
    models = []
    for data in datas:
        torch.manual_seed(0)
        models.append(build_model(model_name, data.dims, CLASSES, cfg).to(device))
    sync(device)
    start = time.perf_counter()
    if stacked:
        fit_stacked(models, datas, settings, progress=False)
    else:
        for model, data in zip(models, datas, strict=True):
            fit(model, data, settings, progress=False)
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="ss_hmvae_kl")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--runs", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=3, help="steps per run (small: x10)")
    parser.add_argument("--repeats", type=int, default=3, help="timings kept: the fastest")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"model {args.model}, {args.precision}\n")
    print("| size | N | one after another (examples/s) | stacked (examples/s) | speed-up |")
    print("|---|---|---|---|---|")
    for size_name in args.sizes:
        size = SIZES[size_name]
        steps = args.steps * (10 if size_name == "small" else 1)
        cfg = TrainConfig(hidden=size.width, a_dim=size.width, z_dim=size.width)
        settings = FitSettings(epochs=1, lr=1e-4, batch_size=size.batch,
                               labeled_batch_size=size.batch, seed=0, precision=args.precision)
        warm = [trial(size, 1, 0, device)]
        for stacked in (False, True):
            seconds(args.model, cfg, warm, settings, stacked, device)
        for n in args.runs:
            datas = [trial(size, steps, seed, device) for seed in range(n)]
            examples = n * steps * 2 * size.batch
            best = {False: float("inf"), True: float("inf")}
            for _ in range(args.repeats):  # interleaved, best of: the CPU may be shared
                for stacked in best:
                    best[stacked] = min(best[stacked], seconds(args.model, cfg, datas,
                                                               settings, stacked, device))
            apart, together = examples / best[False], examples / best[True]
            print(f"| {size_name} | {n} | {apart:.0f} | {together:.0f} | "
                  f"{together / apart:.2f}x |", flush=True)
            del datas
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
