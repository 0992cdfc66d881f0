"""`python -m pipeline compare`: `dvc exp show --json` transposed, one experiment a column."""

from __future__ import annotations

import json

from pipeline.stages.compare import main


def entry(rev: str, name: str | None, alpha: float, epochs: int, kl: float,
          experiments: list | None = None) -> dict:
    return {"rev": rev, "name": name, "data": {
        "params": {"params.yaml": {"data": {"train": {"alpha": alpha, "beta": 1.0},
                                            "profiles": {"demo": {"train": {"epochs": epochs}}},
                                            "report": {"paper_reference": True}}}},
        "metrics": {"reports/metrics/hmvae_kl.json": {"data": {"both": kl, "both_sd": 1.25}},
                    "reports/metrics/m2.json": {"data": {"rgb": 50.0}}}},
        "experiments": experiments}


def test_experiments_become_columns_with_changed_params_and_headline_rows(tmp_path, capsys):
    queued = {"rev": "c" * 40, "name": "queued-one", "data": {"params": {}, "metrics": {}}}
    shown = [entry("workspace", None, 0.5, 20, 61.0),
             entry("a" * 40, "main", 1.0, 20, 60.0, experiments=[
                 {"revs": [entry("b" * 40, "lofty-exp", 2.0, 3, 70.0)]},
                 {"revs": [queued]}])]
    path = tmp_path / "shown.json"
    path.write_text(json.dumps(shown))
    assert main(["--json", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["workspace", "main", "lofty-exp"]  # no metrics: left out
    assert [line.split()[0] for line in lines[1:4]] == ["train.alpha", "train.beta",
                                                         "profiles.demo.train.epochs"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["train.alpha"] == ["0.5", "1", "2"] and rows["train.beta"] == ["1", "1", "1"]
    assert rows["profiles.demo.train.epochs"] == ["20", "20", "3"]  # changed: shown
    assert "report.paper_reference" not in rows  # the same everywhere: hidden
    assert rows["hmvae_kl_both"] == ["61.0±1.2", "60.0±1.2", "70.0±1.2"]
    assert rows["m2_rgb"] == ["50.0", "50.0", "50.0"] and "m2_rgb_sd" not in rows
    assert len({len(line) for line in lines[1:]}) == 1  # aligned columns


def test_bad_input_is_one_line(tmp_path, capsys):
    path = tmp_path / "shown.json"
    path.write_text("not json")
    assert main(["--json", str(path)]) == 2
    assert "not the JSON of dvc exp show" in capsys.readouterr().err
