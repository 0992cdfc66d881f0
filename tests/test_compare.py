"""`python -m pipeline compare` on real DVC experiments in a temporary git repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.stages.compare import main

BIN = Path(sys.executable).parent
# A one-stage project shaped like ours: params.yaml with sections and a profile, and the
# report's headline metrics (a mean and its _sd) computed from the parameters.
WRITE = """import json, os, yaml
p = yaml.safe_load(open("params.yaml"))
os.makedirs("reports/metrics", exist_ok=True)
json.dump({"both": 60 + p["train"]["alpha"], "both_sd": 1.25},
          open("reports/metrics/hmvae_kl.json", "w"))
json.dump({"rgb": 50.0}, open("reports/metrics/m2.json", "w"))  # rgb: in two files
json.dump({"rgb": 40.0, "rgb_sd": 2.0}, open("reports/metrics/mlp.json", "w"))
"""
DVC_YAML = {"stages": {"report": {
    "cmd": "python write.py", "deps": ["write.py"], "params": ["train", "profiles.demo.train",
                                                               "report"],
    "metrics": [{"reports/metrics": {"cache": False}}]}}}
PARAMS = {"profile": "demo", "train": {"alpha": 1.0, "beta": 1.0},
          "report": {"paper_reference": True},
          "profiles": {"demo": {"train": {"epochs": 20}}}}


def run(repo: Path, *cmd: str) -> None:
    env = dict(os.environ, DVC_NO_ANALYTICS="true", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
               GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
               GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com")
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """main (α = 1), experiment lofty (α = 2, 3 epochs), one queued, the workspace at α = 0.5."""
    repo = tmp_path_factory.mktemp("compare")
    (repo / "write.py").write_text(WRITE)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    (repo / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    run(repo, "git", "init", "-q", "-b", "main")
    run(repo, "dvc", "init", "-q")
    run(repo, "dvc", "repro", "-q")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "baseline")
    run(repo, "dvc", "exp", "run", "-q", "-n", "lofty", "-S", "train.alpha=2",
        "-S", "profiles.demo.train.epochs=3")
    run(repo, "git", "reset", "-q", "--hard")
    run(repo, "dvc", "exp", "run", "-q", "--queue", "-n", "queued-one", "-S", "train.beta=2")
    params = PARAMS | {"train": {"alpha": 0.5, "beta": 1.0}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    run(repo, "dvc", "repro", "-q")
    return repo


def test_experiments_become_columns_with_changed_params_and_headline_rows(repo, capsys):
    assert main(["--repo", str(repo)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["workspace", "main", "lofty"]  # queued (no metrics): left out
    assert [line.split()[0] for line in lines[1:4]] == ["train.alpha", "train.beta",
                                                         "profiles.demo.train.epochs"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["train.alpha"] == ["0.5", "1", "2"] and rows["train.beta"] == ["1", "1", "1"]
    assert rows["profiles.demo.train.epochs"] == ["20", "20", "3"]  # changed: shown
    assert "report.paper_reference" not in rows and "profile" not in rows  # the same: hidden
    assert "write.py" not in rows  # a dependency's hash is neither parameter nor metric
    assert rows["hmvae_kl_both"] == ["60.5±1.2", "61.0±1.2", "62.0±1.2"]
    assert rows["m2_rgb"] == ["50.0", "50.0", "50.0"] and "m2_rgb_sd" not in rows
    assert rows["mlp_rgb"] == ["40.0±2.0"] * 3
    assert len({len(line) for line in lines[1:]}) == 1  # aligned columns


def test_a_folder_without_dvc_is_one_line(tmp_path, capsys):
    assert main(["--repo", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}: dvc exp show failed") and err.count("\n") == 1
