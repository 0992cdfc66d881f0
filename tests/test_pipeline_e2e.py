"""The DVC pipeline end to end, on a tiny profile, in a temporary git repository.

The recipe of PRIOR-ART.md: copy the project's files, `git init` with one commit, shrink the
demo profile (and drop the train stages of the models it does not train), `dvc repro`, then
`dvc status` must be clean; `dvc exp run -S train.alpha=...` must re-run only the VAE train
stages and `report` (and the cheap `params` check); editing one model's file puts only that
model's stages out of date; a refused `-S` changes no output's bytes; a killed training stage
resumes from its checkpoint; the paper profile validates without network and its download
fails with a clear message. `dvc exp show` holds the report's headline metrics only; a queued
two-point sweep runs; `-S` on a key the profile overrides fails naming the profile's key,
which works.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = {  # the demo profile, shrunk so that the whole chain takes about a minute
    "download": {"source": "synthetic", "synthetic_categories": 3, "synthetic_instances": 2,
                 "synthetic_frames": 1},
    "preprocess": {"size": 32, "workers": 1},
    "split": {"trials": [1, 2], "labeled_fraction": 0.2},
    "finetune": {"weights": "none", "epochs": 1, "image_size": 32, "batch_size": 8},
    "extract": {"batch_size": 16},
    "train": {"epochs": 2, "hidden": 16, "a_dim": 8, "z_dim": 8, "iterative_steps": 2,
              "batch_size": 16, "labeled_batch_size": 8},
    "classical": {},
    "report": {},
    "launch": {},
}
MODELS = ["m2", "ss_hmvae", "ss_hmvae_kl"]
CLASSICAL = ["cotraining"]

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="true", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
               GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
               GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com",
               OMP_NUM_THREADS="1")  # tiny models: one thread beats two on a shared CPU
    env.pop("PYTHONPATH", None)
    return env


def run(repo: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=repo, env=_env(), capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(repo, str(BIN / "dvc"), *args, check=check)


def make_repo(dest: Path, edit, models: list[str] | None = None) -> Path:
    """Copy the project's files (tracked or not ignored) into a fresh git repo, one commit;
    with `models`, dvc.yaml keeps only their train stages."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file() and not name.startswith(("dvc.lock", "data/", "models/",
                                                            "reports/")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    edit(params)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if models is not None:
        text = (dest / "dvc.yaml").read_text()
        for stage in yaml.safe_load(text)["stages"]:
            if stage.startswith("train_") and stage.removeprefix("train_") not in models:
                text = re.sub(rf"\n  {stage}:\n.*?\n\n", "\n", text, flags=re.DOTALL)
        (dest / "dvc.yaml").write_text(text)
    run(dest, "git", "init", "-q")
    run(dest, "git", "add", "-A")
    run(dest, "git", "commit", "-qm", "copy")
    return dest


def tiny(params: dict) -> None:
    params["profile"] = "demo"
    params["trials"] = [1, 2]
    params["profiles"]["demo"] = TINY
    params["train"]["models"] = MODELS
    params["classical"]["models"] = CLASSICAL


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


FIRST_REPRO: dict[str, str] = {}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The tiny project after one `dvc repro`, its results committed as a baseline."""
    path = make_repo(tmp_path_factory.mktemp("e2e"), tiny, MODELS)
    FIRST_REPRO["stdout"] = dvc(path, "repro").stdout
    run(path, "git", "add", "-A")
    run(path, "git", "commit", "-qm", "dvc repro")
    return path


def test_repro_runs_every_stage_and_leaves_status_clean(repo):
    stages = {line.split()[0] for line in dvc(repo, "stage", "list").stdout.splitlines()}
    assert {"params", "download", "preprocess", "split", "finetune@1-rgb", "finetune@2-depth",
            "extract@1", "extract@2", "train_ss_hmvae@2", "classical@cotraining-1",
            "report"} <= stages
    assert not [s for s in stages if s.startswith("train_sdgm")]
    assert ran_stages(FIRST_REPRO["stdout"]) == stages
    assert "Data and pipelines are up to date." in dvc(repo, "status").stdout
    assert ran_stages(dvc(repo, "repro").stdout) == set()  # nothing changed: nothing runs


def test_metrics_hold_real_accuracies(repo):
    for model in MODELS:
        for trial in (1, 2):
            metrics = json.loads((repo / f"models/vae/{model}/trial-{trial}/metrics.json")
                                 .read_text())
            assert metrics["model"] == model
            keys = {"rgb", "depth"} | ({"rgb+depth"} if model != "m2" else set())
            assert keys <= set(metrics["accuracy"])
            assert all(0.0 <= v <= 1.0 for v in metrics["accuracy"].values())
    table = json.loads((repo / "reports/table1.json").read_text())
    rows = {"m2", "ss_hmvae", "ss_hmvae_iterative", "ss_hmvae_kl", "vgg16", "cotraining"}
    assert rows <= set(table["table1"]) <= rows | {"cotraining_start"}
    cell = table["table1"]["ss_hmvae"]["rgb+depth"]
    assert 0.0 <= cell["mean"] <= 100.0 and cell["std"] >= 0.0 and len(cell["trials"]) == 2
    assert "paper_mean" not in cell  # the paper's numbers only beside the paper profile
    markdown = (repo / "reports/table1.md").read_text()
    assert "| SS-HMVAE (iterative sampling) |" in markdown and " ± " in markdown
    assert "co-training, linear SVMs on fc1, diverse picks (ours)" in markdown
    assert (repo / "reports/table1.png").read_bytes()[:4] == b"\x89PNG"
    trials_csv = (repo / "reports/table1-trials.csv").read_text().splitlines()
    assert trials_csv[0] == "row,input,trial,accuracy" and "ss_hmvae,rgb+depth,2," in (
        "\n".join(trials_csv))
    # The headline metrics are the report's alone, one small file per row: per-run files and
    # DVCLive are not metrics, and `dvc metrics show` fits a 200-column terminal.
    shown = json.loads(dvc(repo, "metrics", "show", "--json").stdout)
    files = {name for rev in shown.values() for name in rev.get("data", {})}
    assert files == {f"reports/metrics/{p.name}" for p in (repo / "reports/metrics").iterdir()}
    assert "reports/metrics/hmvae_kl.json" in files
    assert max(len(line.rstrip()) for line in dvc(repo, "metrics", "show").stdout
               .splitlines()) <= 200
    headline = json.loads((repo / "reports/metrics/hmvae.json").read_text())
    assert headline["both"] == cell["mean"] and headline["both_sd"] == cell["std"]
    # `dvc plots show`: the four titled charts of dvc.yaml and the Table 1 bars, no more
    plots = json.loads(dvc(repo, "plots", "show", "--json").stdout)["data"]
    assert len(plots) == 5 and "Test accuracy (%), RGB + depth input, mean over trials" in plots
    for name in ("test-accuracy-rgb", "train-loss"):
        assert (repo / f"reports/curves/{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "--collapse-foreach-matrix" in dvc(repo, "dag", "--help").stdout
    dag = dvc(repo, "dag", "--collapse-foreach-matrix").stdout.splitlines()
    assert max(len(line.rstrip()) for line in dag) <= 200
    # each cached output is on disk once: the workspace file is a hard link to the cache's
    for path in ("models/vgg16/trial-1-rgb/model.pt", "data/features/trial-1.h5"):
        assert (repo / path).stat().st_nlink == 2, path
    # the resume state is neither kept nor cached once a stage completed
    for leftover in ("checkpoint.pt", "state.pt", "code.sha256"):
        assert not [p for p in repo.glob(f"models/**/{leftover}") if "vae" in p.parts or
                    leftover != "code.sha256"], leftover


def experiments(repo: Path) -> list[dict]:
    """`dvc exp show --json` flattened: one dict per revision or experiment, with its name,
    `params` (params.yaml, dotted keys) and `metrics` (every metrics file's keys)."""
    def flat(tree: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                out |= flat(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value
        return out

    found = []
    def walk(entry: dict) -> None:
        data = entry.get("data") or {}
        metrics = {}
        for name, body in (data.get("metrics") or {}).items():
            metrics |= {f"{name}:{k}": v for k, v in flat(body.get("data") or {}).items()}
        params = flat((data.get("params") or {}).get("params.yaml", {}).get("data") or {})
        found.append({"name": entry.get("name") or entry.get("rev"), "params": params,
                      "metrics": metrics})
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs", []):
                walk(rev)

    for entry in json.loads(dvc(repo, "exp", "show", "--json").stdout):
        walk(entry)
    return found


def out_of_date(repo: Path) -> set[str]:
    return set(json.loads(dvc(repo, "status", "--json").stdout))


def test_editing_one_model_file_puts_only_its_stages_out_of_date(repo):
    """The train stages depend on their model's files, not on whole packages."""
    run(repo, "git", "checkout", "--", ".")
    for path, stages in {
            "pipeline/vae/mvae.py": {"train_m2@1", "train_m2@2"},  # M2 and SS-MVAE's file
            "pipeline/vae/sdgm.py": set(),  # SDGM's stages are not in this copy
            "pipeline/vae/hmvae.py": {f"train_{m}@{t}" for m in ("ss_hmvae", "ss_hmvae_kl")
                                      for t in (1, 2)},
            "pipeline/classical/cotrain.py": {"classical@cotraining-1",
                                              "classical@cotraining-2"},
            "pipeline/report.py": {"report"}}.items():
        with (repo / path).open("a") as f:
            f.write("# an edit that changes nothing\n")
        assert out_of_date(repo) == stages, path
        run(repo, "git", "checkout", "--", path)
    assert out_of_date(repo) == set()


def test_editing_alpha_puts_only_the_vae_train_stages_out_of_date(repo):
    """`train.alpha` changed: `dvc status` and DVC's dry run list `params` (a second's
    check) and every VAE train stage, not the classical ones; the report follows the train
    stages (next tests). (`dvc exp run --dry` fails in DVC 3.67: its copy lacks the data.)"""
    run(repo, "git", "checkout", "--", ".")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["alpha"] = 0.5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    expected = {f"train_{m}@{t}" for m in MODELS for t in (1, 2)} | {"params"}
    assert out_of_date(repo) == expected
    assert ran_stages(dvc(repo, "repro", "--dry").stdout) == expected
    run(repo, "git", "checkout", "--", ".")


def output_hashes(repo: Path) -> dict[str, str]:
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in ("data", "models", "reports") for p in (repo / folder).rglob("*")
            if p.is_file()}


def test_refused_set_under_exp_run_changes_no_output(repo):
    """A bad value fails in the first stage, `params`, with the stage's one line, before DVC
    deletes anything; what DVC leaves is the edited params.yaml, which git checkout restores
    (the README says so)."""
    run(repo, "git", "checkout", "--", ".")
    before = output_hashes(repo)
    proc = dvc(repo, "exp", "run", "-S", "train.alpha=-0.5", check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "error: params.yaml: train.alpha: expected a number >= 0, got -0.5" in output
    assert "Traceback" not in output and ran_stages(output) == {"params"}
    assert output_hashes(repo) == before
    changed = run(repo, "git", "status", "--porcelain").stdout.split()
    assert changed == ["M", "params.yaml"]
    run(repo, "git", "checkout", "params.yaml")
    assert out_of_date(repo) == set()


def test_exp_run_alpha_reruns_only_train_and_report(repo):
    run(repo, "git", "checkout", "--", ".")
    proc = dvc(repo, "exp", "run", "-S", "train.alpha=0.5")
    expected = {f"train_{m}@{t}" for m in MODELS for t in (1, 2)} | {"report", "params"}
    assert ran_stages(proc.stdout) == expected
    shown = experiments(repo)
    columns = {key for exp in shown for key in exp["metrics"]}
    assert len(columns) <= 60, sorted(columns)
    alpha = [exp for exp in shown if exp["params"].get("train.alpha") == 0.5]
    assert alpha and all(f"reports/metrics/hmvae_kl.json:{key}" in alpha[0]["metrics"]
                         for key in ("rgb", "depth", "both"))
    # the README's `dvc exp show` (a few columns kept) fits a 200-column terminal
    table = dvc(repo, "exp", "show", "--drop", ".*", "--keep",
                "Experiment|train.alpha|train.beta|.*/hmvae_kl.json:(rgb|depth|both)$").stdout
    assert "hmvae_kl.json:both" in table
    assert max(len(line.rstrip()) for line in table.splitlines()) <= 200


def test_set_on_a_key_the_profile_overrides_is_refused(repo):
    run(repo, "git", "checkout", "--", ".")  # the committed params and results
    proc = dvc(repo, "exp", "run", "-S", "train.epochs=5", check=False)
    assert proc.returncode != 0
    assert ("train.epochs: 5 has no effect, profile 'demo' sets profiles.demo.train.epochs: 2; "
            "set profiles.demo.train.epochs instead") in proc.stdout + proc.stderr
    run(repo, "git", "checkout", "--", ".")


def test_queued_sweep_runs_and_sets_the_profiles_key(repo):
    """A two-point α sweep through `dvc exp run --queue` and
    `dvc queue start`, in DVC's temporary copies; it sets the epochs through the profile's key
    (the route the refusal above names), which must act."""
    run(repo, "git", "checkout", "--", ".")
    dvc(repo, "exp", "run", "--queue", "-S", "train.alpha=0.25,2",
        "-S", "profiles.demo.train.epochs=3")
    dvc(repo, "queue", "start", "-j", "1")
    deadline = time.monotonic() + 400
    while re.search(r"\b(Queued|Running)\b", status := dvc(repo, "queue", "status").stdout):
        assert time.monotonic() < deadline, status
        time.sleep(5)
    assert "Failed" not in status, status
    swept = {exp["params"].get("train.alpha"): exp for exp in experiments(repo)
             if exp["params"].get("profiles.demo.train.epochs") == 3}
    assert set(swept) == {0.25, 2}
    for exp in swept.values():
        assert "reports/metrics/hmvae_kl.json:both" in exp["metrics"]
    # The README's comparison: one column per experiment, well within 200 characters.
    table = run(repo, sys.executable, "-m", "pipeline", "compare").stdout.splitlines()
    assert {swept[0.25]["name"], swept[2]["name"]} <= set(table[0].split())
    assert table[1].split()[0] == "train.alpha" and max(map(len, table)) <= 200
    assert any(line.split()[0] == "hmvae_kl_both" for line in table)
    dvc(repo, "exp", "apply", swept[2]["name"])
    metrics = json.loads((repo / "models/vae/ss_hmvae_kl/trial-1/metrics.json").read_text())
    assert metrics["epochs"] == 3
    run(repo, "git", "checkout", "--", ".")
    dvc(repo, "checkout", "--force")


def test_killed_training_resumes_from_its_checkpoint(repo):
    run(repo, "git", "checkout", "--", "params.yaml", "dvc.lock")  # the committed params
    out = repo / "models/vae/ss_hmvae/trial-1"
    args = ["repro", "-s", "train_ss_hmvae@1"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["profiles"]["demo"]["train"]["epochs"] = 300
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    started = time.time()
    proc = subprocess.Popen([str(BIN / "dvc"), *args], cwd=repo, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:  # kill it once this run has written its first checkpoint (the old one is kept)
        deadline = time.monotonic() + 300
        while not (out / "checkpoint.pt").is_file() or (
                (out / "checkpoint.pt").stat().st_mtime <= started):
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "metrics.json").exists()  # a killed stage never looks complete
    assert "train_ss_hmvae@1" in dvc(repo, "status", "train_ss_hmvae@1").stdout
    resumed = dvc(repo, *args)
    assert re.search(r"checkpoint\.pt: resuming after epoch [1-9]", resumed.stdout)
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 300
    assert "train_ss_hmvae@1" not in dvc(repo, "status", "train_ss_hmvae@1").stdout


def paper_offline(params: dict) -> None:
    params["profile"] = "paper"
    params["trials"] = list(range(1, 11))
    params["download"]["url"] = "http://127.0.0.1:9/rgbd-dataset_eval.zip"  # refused at once
    params["download"]["retries"] = 0


def test_paper_profile_validates_and_fails_clearly_offline(tmp_path):
    repo = make_repo(tmp_path, paper_offline)
    assert "train_ss_hmvae_kl@10" in dvc(repo, "dag", "--dot").stdout
    assert "download" in dvc(repo, "status").stdout
    bad = run(repo, sys.executable, "-m", "pipeline", "split", "--set", "trials=[1, 2]",
              check=False)
    assert bad.returncode == 2 and "trials: expected the effective split.trials" in bad.stderr
    proc = dvc(repo, "repro", "download", check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    assert "put it at data/downloads/rgbd-dataset_eval.zip" in output and "--url" in output
