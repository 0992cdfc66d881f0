"""Several machines, or several GPUs of one machine, share the paper run with DVC alone.

The recipe of docs/scale.md, on the tiny demo profile of tests/test_pipeline_e2e.py, in
temporary git repositories that clone one bare "origin" and share one local-folder DVC
remote:

- machine A reproduces the shared upstream stages (download ... extract of every trial)
  once, `dvc push`es their data and `git push`es dvc.lock; then it trains trial 1;
- machine B clones, `dvc pull`s trial 2's features and trains trial 2;
- both push their runs with `dvc push --run-cache`, and nothing to git (their dvc.lock
  entries would conflict);
- machine C clones, `dvc pull --run-cache --allow-missing`, and `dvc repro --pull
  --allow-missing`: every training stage is restored from the run cache, not run; only
  the report runs.

On one machine with several GPUs, two clones that share one DVC cache (`dvc cache dir`)
run `dvc repro` at once, one per GPU (`CUDA_VISIBLE_DEVICES`); the first clone then
restores both sets of runs from the shared run cache.

The training stages of a trial are found by what they read (the trial's features file), so
the test does not depend on stage names.

DVC keeps no run cache for a stage with an output that is neither cached nor a metric or
plot (`dvc/stage/__init__.py`, `Stage.run`: `no_cache_outs`), and `dvc push --run-cache`
does not push a run's uncached plots, without which the run cannot be restored; so the
training stages' outputs and plots must all be cached for their runs to travel.
`cacheable` makes them so in the test's copy of dvc.yaml (a no-op once dvc.yaml says so).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline_e2e import BIN, _env, dvc, make_repo, ran_stages, run, tiny

pytestmark = pytest.mark.slow
MODELS = ["m2", "ss_hmvae"]


def cacheable(repo: Path) -> None:
    """Every output and plot of the stages that read features files: cached."""
    path = repo / "dvc.yaml"
    spec = yaml.safe_load(path.read_text())
    for stage in spec["stages"].values():
        body = stage.get("do", stage)
        if any(str(d).startswith("data/features/") for d in body.get("deps", [])):
            for key in ("outs", "plots", "metrics"):
                for entry in body.get(key, []):
                    if isinstance(entry, dict):
                        for options in entry.values():
                            options.pop("cache", None)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))


def small(params: dict) -> None:
    """The e2e test's tiny profile with two models, and VGG16 not trained (0 epochs: its
    upstream role is all this test needs)."""
    tiny(params)
    params["train"]["models"] = MODELS
    params["profiles"]["demo"]["finetune"] = {**params["profiles"]["demo"]["finetune"],
                                              "epochs": 0}


def consumers(repo: Path, trial: int) -> list[str]:
    """The stages that read trial `trial`'s features file: its training runs."""
    code = ("import sys\nfrom dvc.repo import Repo\n"
            "with Repo(sys.argv[1]) as repo:\n"
            "    for stage in repo.index.stages:\n"
            "        if any(d.def_path == sys.argv[2] for d in stage.deps):\n"
            "            print(stage.addressing)\n")
    proc = run(repo, str(BIN / "python"), "-c", code, str(repo),
               f"data/features/trial-{trial}.h5")
    return sorted(proc.stdout.split())


def stages_of(repo: Path, prefix: str) -> list[str]:
    names = [line.split()[0] for line in dvc(repo, "stage", "list").stdout.splitlines()]
    return [n for n in names if n == prefix or n.startswith(prefix + "@")]


def clone(origin: Path, dest: Path) -> Path:
    run(origin.parent, "git", "clone", "-q", str(origin), str(dest))
    return dest


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> Path:
    """A bare git origin whose dvc.lock holds the shared upstream stages, their data in the
    DVC remote (a local folder next to it); made by machine A, kept as A's clone."""
    root = tmp_path_factory.mktemp("machines")
    seed = make_repo(root / "seed", small)
    cacheable(seed)
    dvc(seed, "remote", "add", "-d", "shared", str(root / "remote"))
    run(seed, "git", "commit", "-qam", "the shared DVC remote")
    run(root, "git", "clone", "-q", "--bare", str(seed), str(root / "origin.git"))
    a = clone(root / "origin.git", root / "a")
    dvc(a, "repro", *stages_of(a, "extract"))  # the shared upstream, once
    dvc(a, "push")
    run(a, "git", "add", "dvc.lock")
    run(a, "git", "commit", "-qm", "upstream stages")
    run(a, "git", "push", "-q", "origin", "HEAD")
    return root / "origin.git"


def run_folder(stage: str) -> tuple[str, str]:
    """(its metrics.json, its trial) of a training stage: `train_<model>@<trial>` or
    `classical@<model>-<trial>`."""
    name, item = stage.split("@")
    if name == "classical":
        model, trial = item.rsplit("-", 1)
        return f"models/classical/{model}/trial-{trial}/metrics.json", trial
    return f"models/vae/{name.removeprefix('train_')}/trial-{item}/metrics.json", item


def test_two_machines_train_disjoint_trials_and_a_third_only_reports(origin):
    root = origin.parent
    a = root / "a"
    trial1, trial2 = consumers(a, 1), consumers(a, 2)
    assert len(trial1) >= len(MODELS) and not set(trial1) & set(trial2)

    ran_a = ran_stages(dvc(a, "repro", *trial1).stdout)
    assert ran_a == set(trial1)  # the upstream stages are done: only trial 1 trains
    dvc(a, "push", "--run-cache")

    b = clone(origin, root / "b")
    dvc(b, "pull", *stages_of(b, "extract"))  # the features it needs, nothing trained
    ran_b = ran_stages(dvc(b, "repro", "--allow-missing", *trial2).stdout)
    assert ran_b == set(trial2)
    dvc(b, "push", "--run-cache")

    c = clone(origin, root / "c")
    dvc(c, "pull", "--run-cache", "--allow-missing")  # no training output is in dvc.lock yet
    # --pull: the outputs of the runs found in the run cache; --allow-missing: a stage whose
    # uncached outputs (preprocess's report) were never pushed is not run again for them
    proc = dvc(c, "repro", "--pull", "--allow-missing")
    ran_c = ran_stages(proc.stdout)
    trained = set(trial1) | set(trial2)
    assert "report" in ran_c and not ran_c & trained, proc.stdout
    restored = {s for s in trained if f"Stage '{s}' is cached - skipping run" in proc.stdout}
    assert restored == trained, proc.stdout
    assert "Data and pipelines are up to date." in dvc(c, "status", *trained, "report").stdout
    for stage in trained:  # each run's results are those its machine computed
        path, trial = run_folder(stage)
        machine = a if trial == "1" else b
        assert (c / path).read_bytes() == (machine / path).read_bytes(), path
    assert (c / "reports/table1.md").is_file()


def test_two_processes_on_one_machine_share_a_cache(origin):
    """One clone per GPU, all on one DVC cache: two `dvc repro` at once (the repo lock
    forbids two in one workspace), then the first clone restores the other's runs."""
    root = origin.parent
    cache = root / "gpu-cache"
    clones = [clone(origin, root / f"gpu{k}") for k in (0, 1)]
    for repo in clones:
        dvc(repo, "cache", "dir", "--local", str(cache))
    dvc(clones[0], "pull", "--allow-missing")  # the upstream data once, into the shared cache
    dvc(clones[1], "checkout", *stages_of(clones[1], "extract"))
    targets = [consumers(clones[0], 1), consumers(clones[0], 2)]
    procs = [subprocess.Popen([str(BIN / "dvc"), "repro", "--allow-missing", *stages],
                              cwd=repo, env=_env() | {"CUDA_VISIBLE_DEVICES": str(k)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k, (repo, stages) in enumerate(zip(clones, targets, strict=True))]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert [ran_stages(out) for out in outputs] == [set(t) for t in targets]
    proc = dvc(clones[0], "repro", "--allow-missing")
    assert ran_stages(proc.stdout) == {"report"}, proc.stdout
    for stage in targets[1]:  # trial 2's results: those the other process computed
        path, _ = run_folder(stage)
        assert (clones[0] / path).read_bytes() == (clones[1] / path).read_bytes(), path
