"""Training-step throughput of every generative model at the paper's sizes, against the device.

    python bench/bench_train_step.py [--models m2 ss_hmvae_kl ...] [--steps 10]
                                     [--device auto] [--compare] [--compile auto|always|never]
                                     [--precision auto bf16 fp32] [--batch 128]

Prints the device's measured 4096^3 matmul FLOP/s in fp32 and (where native) bf16, then one
row per model and path: milliseconds per step, examples per second (labelled + unlabelled),
FLOPs per step (counted by torch's FlopCounterMode), achieved FLOP/s and its share of the
matmul peak that bounds the device (bf16 on CUDA, fp32 on CPU), and what 200 epochs over the
paper's ~35k training examples would take at that rate.

- "project": the step `fit` runs (`training.train_step`): 4096-d RGB and depth features on the
  device, 128 labelled + 128 unlabelled examples, Appendix C's 1024-unit layers, autocast to
  `--precision` (default auto, the pipeline's: bf16 where native), distribution argument
  checks off, Adam fused on CUDA, and `torch.compile` where `--compile` says (auto: on CUDA);
- "eager reference" (`--compare`): the same step written plainly: fp32, no compile, argument
  checks on, Adam's default (foreach) kernel.

Rates are steady state (warm-up steps and compilation excluded).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    PAPER_EPOCHS,
    PAPER_TRAIN,
    device_name,
    matmul_peak,
    print_table,
    sync,
    write_json,
)
from pipeline.config import TrainConfig
from pipeline.devices import autocast_dtype, native_bf16, resolve_device
from pipeline.engine import adam
from pipeline.vae import MODELS, build_model
from pipeline.vae.modes import unchecked_distributions
from pipeline.vae.objective import Batch
from pipeline.vae.training import LossModule, train_step


def batches(device: torch.device, n: int, dim: int, classes: int) -> tuple[Batch, Batch]:
    g = torch.Generator().manual_seed(0)

    def x() -> dict[str, torch.Tensor]:
        return {m: torch.randn(n, dim, generator=g).to(device) for m in ("rgb", "depth")}

    return Batch(x(), torch.randint(0, classes, (n,), generator=g).to(device)), Batch(x())


def time_path(model_name: str, device: torch.device, *, precision: str, compiled: bool,
              reference: bool, steps: int, batch: int) -> tuple[float, float]:
    """(seconds per step, FLOPs per step) of one path."""
    torch.manual_seed(0)
    model = build_model(model_name, {"rgb": 4096, "depth": 4096}, 51, TrainConfig()).to(device)
    labelled, unlabelled = batches(device, batch, 4096, 51)
    if reference:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    else:
        optimizer = adam(model, 1e-4)
    loss_fn = LossModule(model)
    dtype = autocast_dtype(precision, device)
    counted = FlopCounterMode(display=False)
    with counted:  # eager, before compiling: the same arithmetic
        train_step(loss_fn, optimizer, labelled, unlabelled, dtype=dtype)
    if compiled:
        loss_fn = torch.compile(loss_fn)

    def step() -> None:
        train_step(loss_fn, optimizer, labelled, unlabelled, dtype=dtype)

    with contextlib.nullcontext() if reference else unchecked_distributions():
        for _ in range(3):  # warm-up (and compilation)
            step()
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
    return (time.perf_counter() - start) / steps, counted.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", nargs="+", default=["auto"],
                        choices=["auto", "bf16", "fp32"])
    parser.add_argument("--compile", default="auto", choices=["auto", "always", "never"])
    parser.add_argument("--json", help="also write seconds per step to this file "
                        "(for bench/estimate_paper.py)")
    parser.add_argument("--compare", action="store_true",
                        help="also time the plain eager fp32 reference of each step")
    args = parser.parse_args()
    device = resolve_device(args.device)
    compiled = args.compile == "always" or (args.compile == "auto" and device.type == "cuda")
    print(f"device: {device_name(device)}, torch {torch.__version__}")
    native = native_bf16(device)
    peaks = {"fp32": matmul_peak(device, torch.float32)}
    if native:  # emulated bf16 would take minutes for one product
        peaks["bf16"] = matmul_peak(device, torch.bfloat16)
    for name, peak in peaks.items():
        print(f"matmul 4096^3 {name}: {peak / 1e12:.3f} TFLOP/s")
    if not native:
        print("bf16: emulated on this device (no AMX or AVX512-BF16), not measured; "
              "precision auto is fp32 here")
    bound = "bf16" if device.type == "cuda" else "fp32"
    print(f"\nshare of peak: of the {bound} matmul peak; batch {args.batch} labelled + "
          f"{args.batch} unlabelled; {PAPER_EPOCHS} epochs x {PAPER_TRAIN} examples\n")
    def resolved(p: str) -> str:
        return "bf16" if autocast_dtype(p, device) else "fp32"

    paths = [(f"project {p}{f' ({resolved(p)})' if p == 'auto' else ''}"
              f"{' compiled' if compiled else ''}", p, compiled, False) for p in args.precision]
    if args.compare:
        paths.append(("eager reference fp32", "fp32", False, True))
    rows, step_s = [], {}
    for model_name in args.models:
        for label, precision, compile_it, reference in paths:
            seconds, flops = time_path(model_name, device, precision=precision,
                                       compiled=compile_it, reference=reference,
                                       steps=args.steps, batch=args.batch)
            achieved = flops / seconds
            step_s.setdefault(model_name, {})[label] = seconds
            run = PAPER_EPOCHS * -(-PAPER_TRAIN // args.batch) * seconds
            rows.append([model_name, label, f"{1e3 * seconds:.1f}",
                         f"{2 * args.batch / seconds:.0f}", f"{flops / 1e9:.1f}",
                         f"{achieved / 1e12:.3f}", f"{achieved / peaks[bound]:.0%}",
                         f"{run / 60:.1f}"])
    print_table(["model", "path", "ms/step", "examples/s", "GFLOP/step", "TFLOP/s",
                 "share of peak", "200 epochs (min)"], rows)
    write_json(args.json, {"device": device_name(device), "batch": args.batch,
                           "pipeline_path": paths[0][0], "step_s": step_s})


if __name__ == "__main__":
    main()
