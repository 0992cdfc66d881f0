"""What every benchmark needs: device synchronisation, the machine's matmul peak, a table.

Every benchmark reports its FLOP/s as a share of a peak measured on the same device in the
same run, so numbers from different machines (or from a machine under load) stay comparable.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

# The paper's run (Washington RGB-D evaluation subset, Section 4, Appendix A): every benchmark
# that extrapolates to it takes its sizes from here.
PAPER_FRAMES = 41_877  # frames, each an RGB and a depth image
PAPER_TEST = 6_877  # test frames of a trial (one instance per category held out), about
PAPER_TRAIN = PAPER_FRAMES - PAPER_TEST  # about 35,000 training frames a trial
PAPER_LABELLED = round(0.05 * PAPER_TRAIN)  # the labelled 5 %
PAPER_TRIALS, PAPER_EPOCHS = 10, 200  # trials; epochs of fine-tuning and of training


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so wall-clock times cover the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 4096, reps: int = 10,
                warmup: int = 2) -> float:
    """FLOP/s of an n x n x n matrix product: the practical peak of dense work on `device`.

    The fastest of `reps` timed products, not their mean: on a shared machine the mean
    measures the other jobs too, and a peak that is too low makes every share look too good.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(warmup):
        a @ b
    best = float("inf")
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table, ready to paste into the docs."""
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def write_json(path: str | Path | None, values: dict[str, Any]) -> None:
    """A benchmark's numbers for `bench/estimate_paper.py` (`--json PATH`; none: nothing)."""
    if path is not None:
        Path(path).write_text(json.dumps(values, indent=1) + "\n")
