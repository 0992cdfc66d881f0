"""The `params` stage: every parameter checked before any work, one file per section."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.config import SECTIONS
from pipeline.stages.params import main

ROOT = Path(__file__).resolve().parents[1]


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_one_file_per_section_and_a_key_changes_only_its_section(tmp_path):
    out = tmp_path / "params"
    assert main(["--params", str(ROOT / "params.yaml"), "--out", str(out)]) == 0
    before = files(out)
    assert set(before) == {f"{s}.json" for s in SECTIONS}
    assert b'"models"' not in before["train.json"]  # names stages and rows, not training
    assert main(["--params", str(ROOT / "params.yaml"), "--out", str(out),
                 "--set", "train.alpha=0.5"]) == 0
    after = files(out)
    assert [n for n in before if before[n] != after[n]] == ["train.json"]
    assert main(["--params", str(ROOT / "params.yaml"), "--out", str(out),
                 "--set", "train.models=[m2]", "--set", "classical.models=[ct_svm]"]) == 0
    assert files(out) == before


def test_a_refused_value_is_one_line_and_leaves_every_file(tmp_path, capsys):
    out = tmp_path / "params"
    assert main(["--params", str(ROOT / "params.yaml"), "--out", str(out)]) == 0
    before = files(out)
    capsys.readouterr()
    assert main(["--params", str(ROOT / "params.yaml"), "--out", str(out),
                 "--set", "train.alpha=-0.5"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --set: train.alpha: expected a number >= 0, got -0.5\n"
    assert files(out) == before
    assert main(["--params", str(ROOT / "params.yaml"), "--out", str(tmp_path / "fresh"),
                 "--set", "train.alpha=-0.5"]) == 2
    assert not (tmp_path / "fresh").exists()  # nothing is written before every check


def test_a_bad_value_in_another_profile_is_refused_naming_it(tmp_path, capsys):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["profile"] == "demo"
    params["profiles"]["paper"]["train"] = {"lr": -1.0}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    assert main(["--params", str(path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (f"error: {path}: profiles.paper.train.lr: expected a "
                                       "number > 0, got -1.0\n")
    assert not (tmp_path / "out").exists()
