"""dvc.yaml's code deps follow each stage's imports, and the code stamp hashes the same files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.imports import closure, code_digest
from pipeline.stages import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def code_deps(stage: str) -> list[str]:
    body = STAGES[stage].get("do", STAGES[stage])  # foreach stages keep theirs under `do`
    return [d for d in body["deps"] if d.startswith("pipeline")]


def covers(dep: str, path: str) -> bool:
    return path == dep or path.startswith(dep.rstrip("/") + "/")


def test_every_command_of_dvc_yaml_is_a_stage_module():
    assert set(STAGES) <= set(COMMANDS)


@pytest.mark.parametrize("stage", list(STAGES))
def test_deps_cover_the_stage_import_closure_and_nothing_else(stage):
    deps, files = code_deps(stage), closure(stage)
    missing = [f for f in files if not any(covers(d, f) for d in deps)]
    assert not missing, (f"dvc.yaml: stage {stage!r} imports {missing} (through "
                         f"pipeline/stages/{stage}.py), which its deps do not list: add "
                         f"{', '.join(missing)} (or their folder) to stages.{stage}.deps, "
                         "or editing them re-runs nothing")
    unused = [d for d in deps if not any(covers(d, f) for f in files)]
    assert not unused, (f"dvc.yaml: stages.{stage}.deps lists {unused}, which the stage does "
                        "not import: remove them (they re-run the stage for nothing)")


def test_closure_follows_imports_inside_functions_and_parent_packages():
    train, report, download = closure("train"), closure("report"), closure("download")
    assert {"pipeline/distributed.py", "pipeline/devices.py", "pipeline/vae/__init__.py",
            "pipeline/vae/training.py", "pipeline/__main__.py"} <= set(train)
    assert "pipeline/vae/__init__.py" in report  # imported inside the stage's body
    assert {"pipeline/rgbd/layout.py", "pipeline/rgbd/splits.py"} <= set(download)
    assert "pipeline/vae/training.py" not in download


def test_download_does_not_track_params_it_does_not_read():
    assert "trials" not in STAGES["download"]["params"]


def fake_project(root: Path) -> None:
    files = {"__init__.py": "", "__main__.py": "from pipeline.stages import x\n",
             "stages/__init__.py": "",
             "stages/run.py": "def main():\n    from pipeline import helper\n",
             "helper.py": "from .sub.deep import f\n", "sub/__init__.py": "",
             "sub/deep.py": "f = 1\n", "unused.py": ""}
    for name, text in files.items():
        (root / "pipeline" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "pipeline" / name).write_text(text)


def test_code_digest_changes_with_any_imported_file_only(tmp_path):
    fake_project(tmp_path)
    assert closure("run", tmp_path) == [
        "pipeline/__init__.py", "pipeline/__main__.py", "pipeline/helper.py",
        "pipeline/stages/__init__.py", "pipeline/stages/run.py", "pipeline/sub/__init__.py",
        "pipeline/sub/deep.py"]
    before = code_digest("run", tmp_path)
    (tmp_path / "pipeline/unused.py").write_text("x = 2\n")
    assert code_digest("run", tmp_path) == before
    (tmp_path / "pipeline/sub/deep.py").write_text("f = 2\n")
    assert code_digest("run", tmp_path) != before
