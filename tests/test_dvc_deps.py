"""dvc.yaml's code deps are each stage's own files, and the code stamp hashes the same files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.config import SECTIONS, load_config
from pipeline.imports import closure, code_digest, differences, main, stage_code, write_deps
from pipeline.stages import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.fixture(scope="module")
def wrong() -> dict[str, tuple[list[str], list[str]]]:
    return differences(ROOT / "dvc.yaml")


def body(stage: str) -> dict:
    return STAGES[stage].get("do", STAGES[stage])  # foreach stages keep theirs under `do`


def test_every_command_of_dvc_yaml_is_a_stage_module():
    assert {stage_code(STAGES[s])[0] for s in STAGES} <= set(COMMANDS)


@pytest.mark.parametrize("stage", list(STAGES))
def test_deps_are_the_stage_import_closure_and_nothing_else(stage, wrong):
    add, remove = wrong.get(stage, ([], []))
    assert not add, (f"dvc.yaml: stage {stage!r} runs {add}, which its deps do not list "
                     "(editing them would re-run nothing): add them to its deps, or run "
                     "`python -m pipeline.imports --write`")
    assert not remove, (f"dvc.yaml: stages.{stage}.deps lists {remove}, which the stage does "
                        "not run (editing them re-runs it for nothing): remove them, or run "
                        "`python -m pipeline.imports --write`")


def test_one_train_stage_per_model_of_train_models():
    config = load_config(ROOT / "params.yaml")
    trains = {stage_code(STAGES[s])[1] for s in STAGES if stage_code(STAGES[s])[0] == "train"}
    assert trains == set(config.train.models), (
        "dvc.yaml: one train_<model> stage per model of train.models (params.yaml); add or "
        f"remove: {sorted(trains ^ set(config.train.models))}")
    assert all(f"train_{m}" in STAGES for m in config.train.models)


def test_a_model_stage_runs_its_own_model_files_only():
    kl, sdgm = closure("train", model="ss_hmvae_kl"), closure("train", model="sdgm")
    assert "pipeline/vae/hmvae.py" in kl and "pipeline/vae/sdgm.py" not in kl
    assert "pipeline/vae/sdgm.py" in sdgm and "pipeline/vae/hmvae.py" not in sdgm
    assert "pipeline/vae/mvae.py" in closure("train", model="m2")
    assert not [f for f in closure("train") if f.startswith("pipeline/classical/")]
    assert not [f for f in closure("classical") if f.startswith("pipeline/vae/")]
    # the report runs no model code: titles are pipeline/titles.py
    assert not [f for f in closure("report") if f.startswith(("pipeline/vae/",
                                                               "pipeline/classical/"))]


def test_params_runs_before_every_other_stage():
    """Every stage descends from `params` (DVC runs it first: a refused value deletes
    nothing), which writes one file per section; download depends on its own."""
    import networkx as nx
    from dvc.repo import Repo

    outs = [next(iter(o)) for o in STAGES["params"]["outs"]]
    assert outs == [f"data/params/{s}.json" for s in SECTIONS]
    assert "data/params/download.json" in body("download")["deps"]
    with Repo(str(ROOT)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        [params] = [s for s in graph if s.addressing == "params"]
        late = [s.addressing for s in graph if s is not params
                and not nx.has_path(graph, s, params)]
    assert not late, f"dvc.yaml: {late} do not depend on `params`, directly or not"


def test_closure_follows_imports_inside_functions_and_parent_packages():
    train, download = closure("train"), closure("download")
    assert {"pipeline/distributed.py", "pipeline/devices.py", "pipeline/vae/__init__.py",
            "pipeline/vae/training.py", "pipeline/__main__.py"} <= set(train)
    assert {"pipeline/rgbd/layout.py", "pipeline/rgbd/splits.py"} <= set(download)
    assert "pipeline/vae/training.py" not in download


def test_download_does_not_track_params_it_does_not_read():
    assert "trials" not in STAGES["download"]["params"]


def fake_project(root: Path) -> None:
    files = {"__init__.py": "", "__main__.py": "from pipeline.stages import x\n",
             "stages/__init__.py": "",
             "stages/run.py": "def main():\n    from pipeline import helper, vae\n",
             "helper.py": "from .sub.deep import f\n", "sub/__init__.py": "",
             "sub/deep.py": "f = 1\n", "unused.py": "",
             "vae/__init__.py": ("from pipeline.vae.a import A\nfrom pipeline.vae.b import B\n"
                                 "from pipeline.vae.shared import S, helper\n"
                                 "MODELS = {'a': A(S), 'b': B(S)}\n"
                                 "def build():\n    return helper()\n"),
             "vae/a.py": "A = 1\n", "vae/b.py": "from pipeline.vae.c import C\n",
             "vae/c.py": "", "vae/shared.py": ""}
    for name, text in files.items():
        (root / "pipeline" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "pipeline" / name).write_text(text)


def test_code_digest_changes_with_any_imported_file_only(tmp_path):
    fake_project(tmp_path)
    everything = ["pipeline/__init__.py", "pipeline/__main__.py", "pipeline/helper.py",
                  "pipeline/stages/__init__.py", "pipeline/stages/run.py",
                  "pipeline/sub/__init__.py", "pipeline/sub/deep.py", "pipeline/vae/__init__.py",
                  "pipeline/vae/a.py", "pipeline/vae/b.py", "pipeline/vae/c.py",
                  "pipeline/vae/shared.py"]
    assert closure("run", tmp_path) == everything
    # a model of the registry runs its own modules and what the registry shares, no other's
    assert closure("run", tmp_path, model="a") == [
        f for f in everything if f not in ("pipeline/vae/b.py", "pipeline/vae/c.py")]
    assert "pipeline/vae/c.py" in closure("run", tmp_path, model="b")
    before = code_digest("run", tmp_path)
    (tmp_path / "pipeline/unused.py").write_text("x = 2\n")
    assert code_digest("run", tmp_path) == before
    (tmp_path / "pipeline/sub/deep.py").write_text("f = 2\n")
    assert code_digest("run", tmp_path) != before


def test_check_and_write_tools_name_and_fix_wrong_deps(tmp_path, capsys):
    fake_project(tmp_path)
    dvc_yaml = tmp_path / "dvc.yaml"
    dvc_yaml.write_text("stages:\n  train_a:\n    # kept\n    cmd: python -m pipeline run "
                        "--model a\n    deps:\n      - data/x\n      - pipeline/vae/b.py\n"
                        "      - pipeline/__init__.py\n    outs:\n      - out\n")
    assert main(["--dvc-yaml", str(dvc_yaml)]) == 1
    err = capsys.readouterr().err
    assert re.search(r"stages\.train_a\.deps: add \[.*'pipeline/vae/a\.py'.*\], remove "
                     r"\['pipeline/vae/b\.py'\]", err), err
    assert write_deps(dvc_yaml) == ["train_a"]
    assert differences(dvc_yaml) == {}
    text = dvc_yaml.read_text()
    assert "# kept" in text and "      - data/x\n" in text and "pipeline/vae/b.py" not in text
    assert main(["--dvc-yaml", str(dvc_yaml)]) == 0


def test_inference_runs_no_training_code_and_the_report_no_model_code():
    """docs/architecture.md: `predict` (evaluate, saved) imports nothing from training, the
    report nothing of the models."""
    training = {"pipeline/engine.py", "pipeline/vae/training.py", "pipeline/vae/experiment.py"}
    assert training.isdisjoint(closure("predict")), sorted(training & set(closure("predict")))
    models = [p for p in closure("report") if p.startswith(("pipeline/vae/",
                                                            "pipeline/classical/"))]
    assert models == []
