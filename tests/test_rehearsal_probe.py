"""`bench/rehearse_paper.py --probe`: the rehearsal's training probe runs on the current
training API (an earlier consolidation left it calling removed functions, unnoticed because
nothing ran it) and writes the timings it extrapolates from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.store import FeatureSet, write_features

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("model", ["ss_hmvae", "m2"])
def test_the_training_probe_times_a_step_and_both_evaluations(tmp_path, model):
    rng = np.random.default_rng(0)
    n, test = 300, 40
    write_features(tmp_path / "features.h5", FeatureSet(
        features={m: rng.random((n, 32), dtype=np.float32) for m in ("rgb", "depth")},
        label=rng.integers(0, 3, n), is_test=np.arange(n) >= n - test,
        is_labeled=np.arange(n) < 20, categories=["a", "b", "c"]))
    params = (ROOT / "params.yaml").read_text().replace("profile: demo", "profile: paper", 1)
    params = params.replace("trials: [1, 2]\n", f"trials: {list(range(1, 11))}\n", 1)
    (tmp_path / "params.yaml").write_text(params)
    out = tmp_path / "probe" / "times.json"
    subprocess.run([sys.executable, str(ROOT / "bench/rehearse_paper.py"), "--probe", model,
                    "--features", str(tmp_path / "features.h5"), "--steps", "1",
                    "--test-rows", "8", "--out", str(out)], cwd=tmp_path, check=True,
                   timeout=600)
    times = json.loads(out.read_text())
    assert times["n_test"] == test and times["n_unlabelled"] == n - test - 20
    for key in ("prepare_s", "step_s", "epoch_eval_per_row_s", "final_eval_per_row_s"):
        assert times[key] > 0, key
    assert times["run_s"] > 200 * times["step_s"]  # 200 epochs of at least one step
    metrics = json.loads((out.parent / "metrics.json").read_text())
    assert metrics["model"] == model and metrics["accuracy"]
