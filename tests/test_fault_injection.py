"""Fault injection: every long stage, SIGKILLed at seeded random points, then run again.

A chain of stage commands (as dvc.yaml runs them, tiny profile, one trial) runs once without
interruption; then, per stage, a copy of its inputs runs the stage `POINTS` times, each
killed (the whole process group, as a power cut or an out-of-memory kill would) at a seeded
random moment of its measured duration, and once to completion. After every kill no output
may look complete unless it is the uninterrupted run's (no partial file is ever taken as
whole), and the final outputs must equal the uninterrupted run's byte for byte (every stage
is deterministic on a CPU: resuming from a checkpoint gives the same result). The VGG stages
use a tiny network of VGG16's layout (tests/tiny_vgg_stage.py), so that the whole test takes
about a minute; FAULT_POINTS=20 tries more points.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline_e2e import TINY

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "tests" / "tiny_vgg_stage.py"
POINTS = int(os.environ.get("FAULT_POINTS", "2"))
IMAGES, SPLITS = "data/images.h5", "data/splits.h5"
FEATURES = "data/features/trial-1.h5"
# stage -> (command arguments, outputs compared with the uninterrupted run)
STAGES = {
    "download": (["download", "--out", "data/raw", "--cache", "data/downloads",
                  "--no-progress"], ["data/raw", "data/downloads"]),
    "preprocess": (["preprocess", "--raw", "data/raw", "--out", IMAGES, "--no-progress"],
                   [IMAGES, "data/images-config.json", "data/preprocess-report.json"]),
    "split": (["split", "--images", IMAGES, "--trials-file", "data/raw/testinstance_ids.txt",
               "--out", SPLITS], [SPLITS, "data/splits-config.json"]),
    **{f"finetune-{m}": (["finetune", "--images", IMAGES, "--splits", SPLITS, "--trial", "1",
                          "--modality", m, "--out", f"models/vgg16/trial-1-{m}"],
                         [f"models/vgg16/trial-1-{m}"]) for m in ("rgb", "depth")},
    "extract": (["extract", "--images", IMAGES, "--splits", SPLITS, "--trial", "1",
                 "--checkpoints", "models/vgg16", "--out", FEATURES],
                [FEATURES, "data/features/trial-1.config.json"]),
    "train": (["train", "--features", FEATURES, "--model", "ss_hmvae", "--out",
               "models/vae/ss_hmvae/trial-1", "--no-progress"], ["models/vae/ss_hmvae/trial-1"]),
}
# Files that may be left by a killed run because the next run resumes from them or
# rewrites them first: they are not outputs that claim completeness.
RESUMABLE = {"state.pt", "checkpoint.pt", "code.sha256", "config.json"}
# DVCLive's logs: appended per epoch, so a resumed run's copy holds the same rows only in
# its tsv files (its step counters restart): compared by the metrics they lead to instead.
LOGS = ("live", "dvclive")
KILLED = ["download", "preprocess", "finetune-rgb", "extract", "train"]

pytestmark = pytest.mark.slow


def _params(path: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    demo = {**TINY, "split": {"trials": [1], "labeled_fraction": 0.2},
            # a checkpoint after each epoch: a kill can fall between them
            "finetune": {**TINY["finetune"], "epochs": 3, "checkpoint_every": 1},
            "train": {**TINY["train"], "epochs": 6}}
    params.update(profile="demo", trials=[1])
    params["profiles"]["demo"] = demo
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _start(cwd: Path, stage: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", DVC_NO_ANALYTICS="true")
    return subprocess.Popen([sys.executable, str(LAUNCHER), *STAGES[stage][0]], cwd=cwd,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _run(cwd: Path, stage: str) -> float:
    started = time.monotonic()
    proc = _start(cwd, stage)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{stage} failed:\n{err[-3000:]}"
    return time.monotonic() - started


def _kill_at(cwd: Path, stage: str, delay: float) -> None:
    proc = _start(cwd, stage)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    with contextlib.suppress(ProcessLookupError):  # reader processes, preprocess's pool
        os.killpg(proc.pid, signal.SIGKILL)


def _files(cwd: Path, outputs: list[str]) -> dict[str, bytes]:
    found = {}
    for out in outputs:
        path = cwd / out
        for f in [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []:
            rel = f.relative_to(cwd)
            if f.is_file() and not set(rel.parts) & set(LOGS):
                found[rel.as_posix()] = f.read_bytes()
    return found


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """The uninterrupted chain, and each stage's duration."""
    cwd = tmp_path_factory.mktemp("clean")
    _params(cwd / "params.yaml")
    return cwd, {stage: _run(cwd, stage) for stage in STAGES}


@pytest.mark.parametrize("stage", KILLED)
def test_killed_stage_reruns_to_the_uninterrupted_result(clean, tmp_path, stage):
    source, durations = clean
    outputs = STAGES[stage][1]
    shutil.copytree(source, tmp_path, dirs_exist_ok=True)
    for out in outputs:  # this stage's outputs go; its inputs stay
        path = tmp_path / out
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    expected = _files(source, outputs)
    rng = random.Random(f"{stage}-{POINTS}")
    for _ in range(POINTS):
        delay = rng.uniform(0.1, 1.0) * durations[stage]
        _kill_at(tmp_path, stage, delay)
        left = _files(tmp_path, outputs)
        claims = {k: v for k, v in left.items()  # hidden: staging, never read as output
                  if Path(k).name not in RESUMABLE
                  and not any(part.startswith(".") for part in Path(k).parts)}
        wrong = [k for k, v in claims.items() if expected.get(k) != v]
        assert not wrong, f"{stage} killed after {delay:.2f} s left incomplete {wrong}"
    _run(tmp_path, stage)
    got = _files(tmp_path, outputs)
    assert sorted(got) == sorted(expected)  # no stray partial file either
    differ = [k for k in expected if got[k] != expected[k]]
    assert not differ, f"{stage}: after {POINTS} kills, {differ} differ from an uninterrupted run"
