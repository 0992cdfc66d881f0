"""The whole paper run's hours on this device, from the rates `make bench` just measured.

    python bench/estimate_paper.py [DIR]        (DIR: bench-results/, where run_all.sh writes)

Reads the JSON that `bench_vgg.py`, `bench_train_step.py` and `bench_fit.py` wrote with
`--json` in the same `make bench` run and multiplies each rate by the paper's counts
(`bench/_common.py`: 41,877 frames, 10 trials, 200 epochs, 5 % labelled):

- fine-tuning: 10 trials x 2 modalities, 200 epochs over the labelled frames at the
  fine-tuning rate, and one pass over the test frames at the extraction rate;
- extraction: 10 trials x 2 modalities x every frame;
- training: 10 trials of every generative model, 200 epochs of the pipeline's step
  (`bench_train_step`'s first path) over the unlabelled frames, plus each epoch's learning
  curves and checkpoint as `bench_fit` measured them per epoch (they do not grow with its
  steps), plus the final evaluation of the model `bench_fit` ran (run_all.sh: SS-HMVAE,
  whose iterative sampling dominates; the other models' final evaluations take about a
  tenth of an epoch and are not counted);
- not counted: download, preprocess, split, report (minutes on a CPU: docs/scale.md) and the
  classical peers (CPU only, about 17 CPU-minutes each).

One stage after another on this one device; several devices divide it (docs/scale.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    PAPER_EPOCHS,
    PAPER_FRAMES,
    PAPER_LABELLED,
    PAPER_TEST,
    PAPER_TRAIN,
    PAPER_TRIALS,
    print_table,
)


def estimate(vgg: dict, steps: dict, fit: dict) -> list[tuple[str, float, str]]:
    """(part, hours, how) of the paper run from the three benchmarks' numbers."""
    finetune, extract = vgg["finetune_images_per_s"], vgg["extract_images_per_s"]
    runs = PAPER_TRIALS * 2
    parts = [
        ("fine-tuning", runs * (PAPER_EPOCHS * PAPER_LABELLED / finetune
                                + PAPER_TEST / extract) / 3600,
         f"{runs} runs x {PAPER_EPOCHS} epochs x {PAPER_LABELLED:,} labelled frames at "
         f"{finetune:.1f} images/s"),
        ("extraction", runs * PAPER_FRAMES / extract / 3600,
         f"{runs} x {PAPER_FRAMES:,} frames at {extract:.1f} images/s")]
    batch = steps["batch"]
    per_epoch = -(-(PAPER_TRAIN - PAPER_LABELLED) // batch)
    overhead = fit["overhead_per_epoch_s"]
    for model, paths in steps["step_s"].items():
        step = paths[steps["pipeline_path"]]
        hours = PAPER_TRIALS * PAPER_EPOCHS * (per_epoch * step + overhead) / 3600
        how = (f"{PAPER_TRIALS} trials x {PAPER_EPOCHS} epochs x ({per_epoch} steps of "
               f"{1e3 * step:.0f} ms + {overhead:.1f} s of curves and checkpoint)")
        if model == fit["model"]:
            final = PAPER_TRIALS * PAPER_TEST * fit["final_eval_per_row_s"] / 3600
            hours += final
            how += f", +{final:.1f} h final evaluation"
        parts.append((f"training {model}", hours, how))
    return parts


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-results")
    names = {"vgg": "bench_vgg.py", "train_step": "bench_train_step.py", "fit": "bench_fit.py"}
    found = {}
    for name, script in names.items():
        path = folder / f"{name}.json"
        if not path.is_file():
            sys.exit(f"{path}: missing; run `python bench/{script} --json {path}` "
                     "(or `make bench`) first")
        found[name] = json.loads(path.read_text())
    parts = estimate(found["vgg"], found["train_step"], found["fit"])
    print(f"device: {found['train_step']['device']}; the paper run's parts at the rates "
          "measured above:\n")
    print_table(["part", "hours", "how"], [[p, f"{h:,.1f}", how] for p, h, how in parts])
    total = sum(h for _, h, _ in parts)
    print(f"\nestimated hours of the whole paper run on this device: {total:,.0f} h "
          f"({total / 24:,.1f} days), one stage after another")


if __name__ == "__main__":
    main()
