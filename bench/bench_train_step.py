"""Throughput of one SS-HMVAE-kl training step at the paper's sizes, against the machine.

Prints, in one run on one device: the measured matrix-multiply FLOP/s (fp32 and bf16), and
for a training step (4096-d RGB and depth features, 128 labelled + 128 unlabelled examples,
Appendix C's 1024-unit layers, Adam) in fp32 and under bf16 autocast: steps/s, examples/s,
FLOPs per step (counted by torch's FlopCounterMode) and achieved FLOP/s as a share of the
matmul peak of the same precision.

    python bench/bench_train_step.py [--model ss_hmvae_kl] [--steps 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import device_name, matmul_peak, print_table, sync
from pipeline.config import TrainConfig
from pipeline.devices import resolve_device
from pipeline.vae import build_model
from pipeline.vae.objective import Batch


def batches(device: torch.device, n: int, dim: int, classes: int) -> tuple[Batch, Batch]:
    g = torch.Generator().manual_seed(0)

    def x() -> dict[str, torch.Tensor]:
        return {m: torch.randn(n, dim, generator=g).to(device) for m in ("rgb", "depth")}

    return Batch(x(), torch.randint(0, classes, (n,), generator=g).to(device)), Batch(x())


def time_steps(model: str, device: torch.device, bf16: bool, steps: int,
               batch: int) -> tuple[float, float]:
    """(seconds per step, FLOPs per step)."""
    torch.manual_seed(0)
    net = build_model(model, {"rgb": 4096, "depth": 4096}, 51, TrainConfig()).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    labelled, unlabelled = batches(device, batch, 4096, 51)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = net.loss(labelled, unlabelled)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps, counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ss_hmvae_kl")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device: {device_name(device)}, torch {torch.__version__}")
    peaks = {"fp32": matmul_peak(device, torch.float32),
             "bf16": matmul_peak(device, torch.bfloat16)}
    for precision, peak in peaks.items():
        print(f"matmul 4096^3 {precision}: {peak / 1e9:8.1f} GFLOP/s")
    print(f"\n{args.model} training step, batch {args.batch} labelled + {args.batch} unlabelled")
    rows = []
    for precision in ("fp32", "bf16"):
        seconds, flops = time_steps(args.model, device, precision == "bf16", args.steps,
                                    args.batch)
        achieved = flops / seconds
        rows.append([precision, f"{1e3 * seconds:.1f}", f"{2 * args.batch / seconds:.0f}",
                     f"{flops / 1e9:.1f}", f"{achieved / 1e9:.1f}",
                     f"{achieved / peaks[precision]:.0%}"])
    print_table(["precision", "step (ms)", "examples/s", "GFLOP/step", "GFLOP/s",
                 "share of matmul peak"], rows)


if __name__ == "__main__":
    main()
