"""Whole epochs of the project's training loop (`fit`) at the paper's scale, and 200 of them.

    python bench/bench_fit.py [--model ss_hmvae_kl] [--examples N] [--epochs 3]
                              [--device auto] [--precision bf16] [--compile auto]

Random 4096-d RGB and depth features for `--examples` training examples (5% labelled, as in
the paper), held on the device as `fit` holds a trial's; the paper's model sizes and
batches. Times `--epochs` epochs of `training.fit` (the first one apart: it includes
`torch.compile`), and prints seconds per epoch, examples per second, the share of the
device's matmul peak (bf16 on CUDA, fp32 on CPU; FLOPs per step counted once), and what
200 epochs take at that rate. This is the loop the train stage runs, per-epoch host work
included (index transfer, loss means); the per-epoch test evaluation is not.
`--examples` defaults to the paper's ~35,000 on CUDA and to 2,000 on the CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import device_name, matmul_peak, sync
from pipeline.config import TrainConfig
from pipeline.devices import resolve_device
from pipeline.vae import MODELS, build_model
from pipeline.vae.data import FeatureScaler, TrialData
from pipeline.vae.objective import Batch
from pipeline.vae.training import (
    FitSettings,
    LossModule,
    autocast_dtype,
    fit,
    make_optimizer,
    train_step,
)

DIM, CLASSES = 4096, 51


def random_trial(n: int, device: torch.device) -> TrialData:
    g = torch.Generator().manual_seed(0)
    n_l = max(2, n // 20)

    def batch(rows: int, labelled: bool) -> Batch:
        x = {m: torch.randn(rows, DIM, generator=g).to(device) for m in ("rgb", "depth")}
        y = torch.randint(0, CLASSES, (rows,), generator=g).to(device) if labelled else None
        return Batch(x, y)

    scaler = FeatureScaler("gaussian", {}, {})
    return TrialData(labelled=batch(n_l, True), unlabelled=batch(n - n_l, False),
                     test=batch(2, True), scaler=scaler,
                     categories=[str(c) for c in range(CLASSES)], modalities=["rgb", "depth"])


def flops_per_step(model_name: str, data: TrialData, cfg: TrainConfig, precision: str) -> int:
    model = build_model(model_name, data.dims, CLASSES, cfg).to(data.test.y.device)
    take = slice(0, cfg.batch_size)
    labelled = Batch({m: x[take] for m, x in data.labelled.x.items()}, data.labelled.y[take])
    unlabelled = Batch({m: x[take] for m, x in data.unlabelled.x.items()})
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(LossModule(model), make_optimizer(model, 1e-4), labelled, unlabelled,
                   dtype=autocast_dtype(precision))
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ss_hmvae_kl", choices=list(MODELS))
    parser.add_argument("--examples", type=int, default=0, help="0: 35000 on CUDA, else 2000")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--compile", default="auto", choices=["auto", "always", "never"])
    args = parser.parse_args()
    device = resolve_device(args.device)
    compiled = args.compile == "always" or (args.compile == "auto" and device.type == "cuda")
    cfg = TrainConfig(precision=args.precision)
    examples = args.examples or (35_000 if device.type == "cuda" else 2_000)
    data = random_trial(examples, device)
    peak = matmul_peak(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    flops = flops_per_step(args.model, data, cfg, args.precision)
    torch.manual_seed(0)
    model = build_model(args.model, data.dims, CLASSES, cfg).to(device)
    times: list[float] = []

    def on_epoch(epoch: int, means: dict[str, float]) -> None:
        sync(device)
        times.append(time.perf_counter())

    settings = FitSettings(epochs=args.epochs, lr=1e-4, batch_size=cfg.batch_size,
                           labeled_batch_size=cfg.labeled_batch_size, seed=0,
                           precision=args.precision, compile=compiled)
    start = time.perf_counter()
    fit(model, data, settings, on_epoch=on_epoch, progress=False)
    first = times[0] - start
    steady = (times[-1] - times[0]) / max(1, len(times) - 1) if len(times) > 1 else first
    steps = -(-len(data.unlabelled) // cfg.batch_size)
    achieved = flops * steps / steady
    processed = len(data.unlabelled) + steps * min(cfg.labeled_batch_size, len(data.labelled))
    print(f"device: {device_name(device)}, torch {torch.__version__}; {args.model}, "
          f"{args.precision}{', compiled' if compiled else ''}; {examples} examples "
          f"({len(data.labelled)} labelled), {steps} steps per epoch")
    print(f"matmul peak {peak / 1e12:.3f} TFLOP/s; {flops / 1e9:.1f} GFLOP per step")
    print(f"first epoch {first:.2f} s (compilation included), then {steady:.3f} s per epoch: "
          f"{processed / steady:.0f} examples/s (labelled + unlabelled), "
          f"{achieved / 1e12:.3f} TFLOP/s = "
          f"{achieved / peak:.0%} of peak")
    print(f"200 epochs: {(first + 199 * steady) / 60:.2f} min")


if __name__ == "__main__":
    main()
