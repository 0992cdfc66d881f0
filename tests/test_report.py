"""Table 1 aggregation: mean ± std over trials, rows, the paper's numbers, the stage's files."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import yaml

from pipeline.errors import UserError
from pipeline.report import PAPER_TABLE1, Row, collect, options, read_runs, to_json, to_markdown
from pipeline.stages.report import main
from pipeline.titles import TITLES

ACC = {  # model -> trial -> metrics.json
    "m2": {1: {"accuracy": {"rgb": 0.80, "depth": 0.60}},
           2: {"accuracy": {"rgb": 0.90, "depth": 0.70}}},
    "ss_hmvae": {
        1: {"accuracy": {"rgb": 0.5, "depth": 0.25, "rgb+depth": 0.75},
            "accuracy_iterative": {"rgb": 0.6, "depth": 0.3, "rgb+depth": 0.75},
            "accuracy_by_option": {"zero_fill": {"posterior_mean": {"rgb": 0.4, "depth": 0.2},
                                                 "monte_carlo": {"rgb": 0.5, "depth": 0.25}}}},
        2: {"accuracy": {"rgb": 0.7, "depth": 0.35, "rgb+depth": 0.85},
            "accuracy_iterative": {"rgb": 0.8, "depth": 0.4, "rgb+depth": 0.85},
            "accuracy_by_option": {"zero_fill": {"posterior_mean": {"rgb": 0.6, "depth": 0.3},
                                                 "monte_carlo": {"rgb": 0.7, "depth": 0.35}}}},
    },
}
CLASSICAL = {  # the co-training rows and their labelled-only start (`accuracy_start`)
    "ct_svm": {t: {"accuracy": {"rgb": 0.7, "depth": 0.6, "rgb+depth": 0.8},
                   "accuracy_start": {"rgb": 0.65, "depth": 0.55, "rgb+depth": 0.7 + t / 100}}
               for t in (1, 2)},
    "cotraining": {t: {"accuracy": {"rgb": 0.8, "depth": 0.7, "rgb+depth": 0.9},
                       "accuracy_start": {"rgb": 0.65, "depth": 0.55, "rgb+depth": 0.7}}
                   for t in (1, 2)},
}


def write_tree(root: Path) -> tuple[Path, Path]:
    vae, vgg = root / "vae", root / "vgg16"
    for folder, table in ((vae, ACC), (root / "classical", CLASSICAL)):
        for model, trials in table.items():
            for trial, metrics in trials.items():
                path = folder / model / f"trial-{trial}" / "metrics.json"
                path.parent.mkdir(parents=True)
                path.write_text(json.dumps({"model": model, **metrics}))
    for trial, (rgb, depth) in {1: (0.4, 0.2), 2: (0.6, 0.4)}.items():
        for modality, acc in (("rgb", rgb), ("depth", depth)):
            path = vgg / f"trial-{trial}-{modality}" / "metrics.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps({"test_accuracy": acc}))
    return vae, vgg


def rows_of(root: Path, models=("m2", "ss_hmvae"), trials=(1, 2)) -> list[Row]:
    vae, vgg = write_tree(root)
    folders = {m: (root / "classical" if m in CLASSICAL else vae) / m for m in models}
    return collect(read_runs(folders, trials), vgg16=vgg, trials=trials)


def test_rows_and_sample_statistics(tmp_path):
    rows = rows_of(tmp_path)
    assert [r.id for r in rows] == ["m2", "ss_hmvae", "ss_hmvae_iterative", "vgg16"]
    mean, std, n = rows[0].stats("rgb")
    assert (mean, n) == (pytest.approx(85.0), 2)
    assert std == pytest.approx(math.sqrt(2 * 5.0**2))  # ddof = 1: |80 - 90| / sqrt(2)
    assert rows[0].stats("rgb+depth") is None  # unimodal model: no joint column
    assert rows[2].title == "SS-HMVAE (iterative sampling)"
    assert rows[2].stats("depth")[0] == pytest.approx(35.0)
    assert rows[3].stats("rgb")[0] == pytest.approx(50.0)


def test_single_trial_has_zero_std():
    assert Row("x", "x", {"rgb": [0.5]}).stats("rgb") == (50.0, 0.0, 1)


def test_paper_numbers_only_when_asked(tmp_path):
    rows = rows_of(tmp_path)
    ours = to_json(rows, profile="demo", trials=[1, 2], paper=False)
    assert "paper_mean" not in json.dumps(ours) and "paper_ct_svm" not in ours["table1"]
    paper = to_json(rows, profile="paper", trials=[1, 2], paper=True)
    cell = paper["table1"]["ss_hmvae_iterative"]["depth"]
    assert (cell["paper_mean"], cell["paper_std"]) == PAPER_TABLE1["ss_hmvae_iterative"]["depth"]
    assert cell["mean"] == 35.0 and cell["std"] == pytest.approx(7.07, abs=0.01)
    markdown = to_markdown(rows, profile="paper", trials=[1, 2], paper=True)
    assert ("| unimodal | M2 (Kingma et al., 2014) | 85.0 ± 7.1 | 65.0 ± 7.1 | – | 85.6 ± 1.6 "
            "| 72.0 ± 1.7 | – |" in markdown)


def test_cotraining_rows_are_ours_beside_their_start_and_the_papers_copied_apart(tmp_path):
    """Our co-training rows say they are ours, each followed by the labelled-only SVMs it
    starts from; the paper's † numbers are rows of their own with no number of ours."""
    rows = rows_of(tmp_path, models=("ss_hmvae", "ct_svm", "cotraining", "m2"))
    ids = [r.id for r in rows]
    assert ids == ["m2", "ss_hmvae", "ss_hmvae_iterative", "ct_svm", "ct_svm_start",
                   "cotraining", "cotraining_start", "vgg16"]
    assert rows[4].stats("rgb+depth")[0] == pytest.approx(71.5)  # mean of 71 and 72
    assert "(ours)" in TITLES["ct_svm"] and "(ours)" in TITLES["cotraining"]
    assert "Cheng" not in TITLES["ct_svm"] + TITLES["cotraining"]
    table = to_json(rows, profile="paper", trials=[1, 2], paper=True)
    assert table["table1"]["ct_svm"]["rgb+depth"] == {"mean": 80.0, "std": 0.0,
                                                      "trials": [80.0, 80.0]}
    assert table["table1"]["paper_ct_svm"] == {
        k: {"paper_mean": m, "paper_std": None}
        for k, m in (("rgb", 78.7), ("depth", 75.4), ("rgb+depth", 83.7))}
    assert table["groups"]["co-training (ours)"] == ids[3:7]
    assert table["groups"]["multimodal"] == ["paper_ct_svm", "paper_cotraining"]
    markdown = to_markdown(rows, profile="paper", trials=[1, 2], paper=True)
    copied = f"| multimodal | {TITLES['paper_ct_svm']} | – | – | – | 78.7 | 75.4 | 83.7 |"
    assert copied in markdown
    assert (f"| co-training (ours) | {TITLES['ct_svm']} | 70.0 ± 0.0 | 60.0 ± 0.0 | "
            "80.0 ± 0.0 | – | – | – |") in markdown
    assert "| its start: labelled-only linear SVMs on fc1 | 65.0 ± 0.0 |" in markdown
    assert "paper_ct_svm" not in to_json(rows, profile="demo", trials=[1, 2],
                                         paper=False)["table1"]


def test_missing_metrics_name_the_file(tmp_path):
    vae, _ = write_tree(tmp_path)
    with pytest.raises(UserError, match=r"trial-3[/\\]metrics.json: metrics file not found"):
        read_runs({"m2": vae / "m2"}, [1, 3])


def params(tmp_path: Path, models=("m2", "ss_hmvae"), classical=("ct_svm",)) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"profile": "paper", "split": {"trials": [1, 2]},
                                    "train": {"models": list(models)},
                                    "classical": {"models": list(classical)}}))
    return str(path)


def run_stage(tmp_path: Path, **kw) -> Path:
    vae, vgg = write_tree(tmp_path)
    out = tmp_path / "reports"
    assert main(["--params", params(tmp_path, **kw), "--vae", str(vae), "--vgg16", str(vgg),
                 "--classical", str(tmp_path / "classical"), "--out", str(out)]) == 0
    return out


def test_stage_writes_table_json_png(tmp_path, capsys):
    out = run_stage(tmp_path)
    table = json.loads((out / "table1.json").read_text())
    assert table["trials"] == [1, 2] and table["table1"]["m2"]["rgb"]["paper_mean"] == 85.6
    assert (out / "table1.png").read_bytes()[:4] == b"\x89PNG"
    assert "SS-HMVAE (iterative sampling)" in (out / "table1.md").read_text()
    printed = capsys.readouterr().out
    assert "VGG16 fine-tuned" in printed and TITLES["ct_svm"] in printed
    assert not list(out.rglob("*.partial"))


def test_every_trial_of_every_row_and_option_in_json_and_csv(tmp_path):
    out = run_stage(tmp_path)
    table = json.loads((out / "table1.json").read_text())
    assert table["table1"]["ss_hmvae"]["depth"]["trials"] == [25.0, 35.0]
    option = table["by_option"]["ss_hmvae:zero_fill:posterior_mean"]["rgb"]
    assert option == {"mean": 50.0, "std": pytest.approx(14.14, abs=0.01),
                      "trials": [40.0, 60.0]}
    lines = list(csv.DictReader(io.StringIO((out / "table1-trials.csv").read_text())))
    got = {(r["row"], r["input"], int(r["trial"])): float(r["accuracy"]) for r in lines}
    assert got[("m2", "rgb", 2)] == 90.0 and got[("ct_svm_start", "rgb+depth", 1)] == 71.0
    assert got[("ss_hmvae:zero_fill:monte_carlo", "depth", 1)] == 25.0
    assert got[("vgg16", "depth", 2)] == 40.0
    assert len(got) == len(lines)  # one line per row, input and trial


def test_stage_reports_missing_file_without_traceback(tmp_path, capsys):
    assert main(["--params", params(tmp_path, models=["m2"], classical=["ct_svm"]), "--vae",
                 str(tmp_path), "--vgg16", str(tmp_path), "--classical", str(tmp_path),
                 "--out", str(tmp_path / "r")]) == 2
    assert "metrics file not found" in capsys.readouterr().err


def test_stage_writes_one_small_metrics_file_per_row(tmp_path):
    out = run_stage(tmp_path)
    files = {p.stem: json.loads(p.read_text()) for p in (out / "metrics").glob("*.json")}
    # every row of the table, each input it has, mean and std; nothing nested, no strings
    inputs = {"m2": ["rgb", "depth"], "hmvae": ["rgb", "depth", "both"],
              "hmvae_it": ["rgb", "depth", "both"], "vgg16": ["rgb", "depth"],
              "ct_svm": ["rgb", "depth", "both"], "ct_svm_start": ["rgb", "depth", "both"]}
    assert {k: set(v) for k, v in files.items()} == {
        row: {f"{k}{sd}" for k in keys for sd in ("", "_sd")} for row, keys in inputs.items()}
    assert files["m2"]["rgb"] == pytest.approx(85.0) and files["hmvae_it"]["depth"] == 35.0
    assert files["m2"]["rgb_sd"] == pytest.approx(round(math.sqrt(50.0), 2))


def test_stage_removes_metrics_files_of_rows_no_longer_in_the_table(tmp_path):
    out = run_stage(tmp_path)
    (out / "metrics" / "gone.json").write_text("{}")
    vae, vgg = tmp_path / "vae", tmp_path / "vgg16"
    assert main(["--params", params(tmp_path), "--vae", str(vae), "--vgg16", str(vgg),
                 "--classical", str(tmp_path / "classical"), "--out", str(out)]) == 0
    assert not (out / "metrics" / "gone.json").exists()


def test_learning_curves_as_csv_for_dvc_and_png_for_people(tmp_path):
    vae, _ = write_tree(tmp_path)
    for model, trials in ACC.items():
        for trial in trials:
            folder = vae / model / f"trial-{trial}" / "dvclive" / "plots" / "metrics"
            (folder / "test" / "accuracy").mkdir(parents=True)
            (folder / "test" / "accuracy" / "rgb.tsv").write_text(
                "step\trgb\n0\t0.5\n1\t" + str(0.6 + trial / 10) + "\n")
    out = tmp_path / "reports"
    assert main(["--params", params(tmp_path), "--vae", str(vae), "--vgg16",
                 str(tmp_path / "vgg16"), "--classical", str(tmp_path / "classical"), "--out",
                 str(out)]) == 0
    rgb = (out / "curves" / "test-accuracy-rgb.csv").read_text().splitlines()
    assert rgb == ["step,m2,ss_hmvae", "0,50.0,50.0", "1,75.0,75.0"]  # % and mean of trials
    both = (out / "curves" / "test-accuracy-both.csv").read_text().splitlines()
    assert both == ["step,m2,ss_hmvae"]  # no model logged it
    for name in ("test-accuracy-rgb", "test-accuracy-depth", "test-accuracy-both",
                 "train-loss"):
        assert (out / "curves" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_options_rows_follow_accuracy_by_option():
    runs = {"m": [{"accuracy_by_option": {"joint": {"a/b": {"rgb": 0.5}}}},
                  {"accuracy_by_option": {"joint": {"a/b": {"rgb": 0.7}}}}]}
    [row] = options(runs)
    assert row.id == "m:joint:a/b" and row.values == {"rgb": [0.5, 0.7]}
