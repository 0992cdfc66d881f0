"""`make bench`'s last line: the whole paper run's hours from the rates just measured.

The benchmarks run at toy sizes here (their numbers are not the point): what is tested is that
each writes what `bench/estimate_paper.py` reads (bench_vgg.py had drifted from the
fine-tuning code it times, unnoticed because nothing ran it) and that the estimate is the
paper's counts times the measured rates."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

from bench._common import PAPER_EPOCHS, PAPER_FRAMES, PAPER_LABELLED, PAPER_TEST, PAPER_TRAIN
from bench.estimate_paper import estimate

ROOT = Path(__file__).resolve().parents[1]


def test_the_estimate_is_the_papers_counts_times_the_measured_rates():
    assert (PAPER_FRAMES, PAPER_TEST, PAPER_LABELLED, PAPER_EPOCHS) == (41_877, 6_877, 1_750, 200)
    vgg = {"finetune_images_per_s": 10.0, "extract_images_per_s": 100.0}
    steps = {"batch": 128, "pipeline_path": "project auto (fp32)",
             "step_s": {"ss_hmvae": {"project auto (fp32)": 0.5, "eager reference fp32": 9.0},
                        "m2": {"project auto (fp32)": 0.25}}}
    fit = {"model": "ss_hmvae", "overhead_per_epoch_s": 3.0, "final_eval_per_row_s": 0.1}
    hours = {part: h for part, h, _ in estimate(vgg, steps, fit)}
    per_epoch = math.ceil((PAPER_TRAIN - PAPER_LABELLED) / 128)
    assert per_epoch == 260
    assert math.isclose(hours["fine-tuning"], 20 * (200 * 1_750 / 10 + 6_877 / 100) / 3600)
    assert math.isclose(hours["extraction"], 20 * 41_877 / 100 / 3600)
    def train(step: float) -> float:  # 10 trials x 200 epochs of 260 steps + 3 s
        return 10 * 200 * (260 * step + 3.0) / 3600

    assert math.isclose(hours["training m2"], train(0.25))
    # the eager reference is not the pipeline's step; SS-HMVAE adds its final evaluation
    assert math.isclose(hours["training ss_hmvae"], train(0.5) + 10 * 6_877 * 0.1 / 3600)


def test_the_benchmarks_write_what_the_estimate_reads(tmp_path):
    def run(*args: str) -> str:
        return subprocess.run([sys.executable, *args], cwd=ROOT, check=True, text=True,
                              capture_output=True, timeout=600).stdout

    run("bench/bench_train_step.py", "--models", "mlp", "m2", "--steps", "1", "--json",
        str(tmp_path / "train_step.json"))
    run("bench/bench_fit.py", "--model", "mlp", "--examples", "300", "--test", "16",
        "--epochs", "1", "--eager-steps", "1", "--json", str(tmp_path / "fit.json"))
    run("bench/bench_vgg.py", "--size", "32", "--steps", "1", "--json",
        str(tmp_path / "vgg.json"))
    out = run("bench/estimate_paper.py", str(tmp_path))
    parts = dict(re.findall(r"^\| (fine-tuning|extraction|training \w+) \| ([\d,.]+) \|", out,
                            re.M))
    assert set(parts) == {"fine-tuning", "extraction", "training mlp", "training m2"}
    total = re.search(r"whole paper run on this device: ([\d,]+) h", out)
    assert total, out
    assert abs(int(total[1].replace(",", "")) - sum(float(h.replace(",", ""))
                                                     for h in parts.values())) <= 1
    step = json.loads((tmp_path / "train_step.json").read_text())
    assert step["pipeline_path"] in step["step_s"]["m2"]
