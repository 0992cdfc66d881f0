"""Table 1 aggregation: mean ± std over trials, rows, the paper's numbers, the stage's files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from pipeline.errors import UserError
from pipeline.report import PAPER_TABLE1, Row, collect, to_json, to_markdown
from pipeline.stages.report import main

TITLES = {"m2": "M2", "ss_hmvae": "SS-HMVAE"}
ACC = {  # model -> trial -> metrics.json
    "m2": {1: {"accuracy": {"rgb": 0.80, "depth": 0.60}},
           2: {"accuracy": {"rgb": 0.90, "depth": 0.70}}},
    "ss_hmvae": {
        1: {"accuracy": {"rgb": 0.5, "depth": 0.25, "rgb+depth": 0.75},
            "accuracy_iterative": {"rgb": 0.6, "depth": 0.3, "rgb+depth": 0.75}},
        2: {"accuracy": {"rgb": 0.7, "depth": 0.35, "rgb+depth": 0.85},
            "accuracy_iterative": {"rgb": 0.8, "depth": 0.4, "rgb+depth": 0.85}},
    },
}


def write_tree(root: Path) -> tuple[Path, Path]:
    vae, vgg = root / "vae", root / "vgg16"
    for model, trials in ACC.items():
        for trial, metrics in trials.items():
            path = vae / model / f"trial-{trial}" / "metrics.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps({"model": model, **metrics}))
    for trial, (rgb, depth) in {1: (0.4, 0.2), 2: (0.6, 0.4)}.items():
        for modality, acc in (("rgb", rgb), ("depth", depth)):
            path = vgg / f"trial-{trial}-{modality}" / "metrics.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps({"test_accuracy": acc}))
    return vae, vgg


def test_rows_and_sample_statistics(tmp_path):
    vae, vgg = write_tree(tmp_path)
    rows = collect(vae=vae, vgg16=vgg, models=["m2", "ss_hmvae"], trials=[1, 2], titles=TITLES)
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
    rows = collect(vae=write_tree(tmp_path)[0], vgg16=tmp_path / "vgg16",
                   models=["m2", "ss_hmvae"], trials=[1, 2], titles=TITLES)
    ours = to_json(rows, profile="demo", trials=[1, 2], paper=False)
    assert "paper_mean" not in json.dumps(ours)
    paper = to_json(rows, profile="paper", trials=[1, 2], paper=True)
    cell = paper["table1"]["ss_hmvae_iterative"]["depth"]
    assert (cell["paper_mean"], cell["paper_std"]) == PAPER_TABLE1["ss_hmvae_iterative"]["depth"]
    assert cell["mean"] == 35.0 and cell["std"] == pytest.approx(7.07, abs=0.01)
    markdown = to_markdown(rows, profile="paper", trials=[1, 2], paper=True)
    assert ("| unimodal | M2 | 85.0 ± 7.1 | 65.0 ± 7.1 | – | 85.6 ± 1.6 | 72.0 ± 1.7 | – |"
            in markdown)


def test_rows_grouped_as_the_paper_with_its_cotraining_numbers(tmp_path):
    """train.models order is not the table's: groups first, then that order within each."""
    vae, vgg = write_tree(tmp_path)
    extra = {"ct_svm": {"rgb": 0.7, "depth": 0.6, "rgb+depth": 0.8},
             "label_spreading": {"rgb": 0.5, "depth": 0.4, "rgb+depth": 0.6},
             "mlp": {"rgb": 0.5, "depth": 0.4, "rgb+depth": 0.6},
             "cotraining": {"rgb": 0.8, "depth": 0.7, "rgb+depth": 0.9}}
    for model, accuracy in extra.items():
        for trial in (1, 2):
            path = vae / model / f"trial-{trial}" / "metrics.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps({"accuracy": accuracy}))
    titles = TITLES | {"ct_svm": "CT+SVM", "label_spreading": "LS", "mlp": "MLP",
                       "cotraining": "Co-training"}
    rows = collect(vae=vae, vgg16=vgg, models=["label_spreading", "ss_hmvae", "mlp", "ct_svm",
                                               "m2", "cotraining"], trials=[1, 2],
                   titles=titles)
    assert [r.id for r in rows] == ["m2", "ct_svm", "cotraining", "ss_hmvae",
                                    "ss_hmvae_iterative", "label_spreading", "mlp", "vgg16"]
    table = to_json(rows, profile="paper", trials=[1, 2], paper=True)
    assert table["groups"] == {"unimodal": ["m2"], "multimodal": ["ct_svm", "cotraining"],
                               "proposed": ["ss_hmvae", "ss_hmvae_iterative"],
                               "reference": ["label_spreading", "mlp", "vgg16"]}
    assert table["table1"]["ct_svm"]["rgb+depth"] == {"mean": 80.0, "std": 0.0,
                                                      "paper_mean": 83.7, "paper_std": None}
    assert table["table1"]["cotraining"]["depth"]["paper_mean"] == 82.6
    markdown = to_markdown(rows, profile="paper", trials=[1, 2], paper=True)
    assert "| multimodal | CT+SVM | 70.0 ± 0.0 | 60.0 ± 0.0 | 80.0 ± 0.0 | 78.7 | 75.4 | 83.7 |" \
        in markdown
    assert "|  | Co-training | 80.0 ± 0.0 | 70.0 ± 0.0 | 90.0 ± 0.0 | 85.5 ± 2.0 |" in markdown
    assert "| reference | LS |" in markdown


def test_missing_metrics_name_the_file(tmp_path):
    vae, vgg = write_tree(tmp_path)
    with pytest.raises(UserError, match=r"trial-3[/\\]metrics.json: metrics file not found"):
        collect(vae=vae, vgg16=vgg, models=["m2"], trials=[1, 3], titles=TITLES)


def test_stage_writes_table_json_png(tmp_path, capsys):
    vae, vgg = write_tree(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"profile": "paper", "split": {"trials": [1, 2]},
                                      "train": {"models": ["m2", "ss_hmvae"]}}))
    out = tmp_path / "reports"
    assert main(["--params", str(params), "--vae", str(vae), "--vgg16", str(vgg),
                 "--out", str(out)]) == 0
    table = json.loads((out / "table1.json").read_text())
    assert table["trials"] == [1, 2] and table["table1"]["m2"]["rgb"]["paper_mean"] == 85.6
    assert (out / "table1.png").read_bytes()[:4] == b"\x89PNG"
    assert "SS-HMVAE (iterative sampling)" in (out / "table1.md").read_text()
    assert "VGG16 fine-tuned" in capsys.readouterr().out
    assert not list(out.glob("*.partial"))


def test_stage_reports_missing_file_without_traceback(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"split": {"trials": [1]}, "train": {"models": ["m2"]}}))
    assert main(["--params", str(params), "--vae", str(tmp_path), "--vgg16", str(tmp_path),
                 "--out", str(tmp_path / "r")]) == 2
    assert "metrics file not found" in capsys.readouterr().err


def test_stage_writes_headline_metrics_with_short_flat_names(tmp_path):
    vae, vgg = write_tree(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"profile": "paper", "split": {"trials": [1, 2]},
                                      "train": {"models": ["m2", "ss_hmvae"]}}))
    out = tmp_path / "reports"
    assert main(["--params", str(params), "--vae", str(vae), "--vgg16", str(vgg),
                 "--out", str(out)]) == 0
    flat = json.loads((out / "metrics.json").read_text())
    # every row of the table, each input it has, mean and std; nothing nested, no strings
    assert set(flat) == {f"{row}_{key}{sd}" for row, keys in [
        ("m2", ["rgb", "depth"]), ("hmvae", ["rgb", "depth", "both"]),
        ("hmvae_it", ["rgb", "depth", "both"]), ("vgg16", ["rgb", "depth"])]
        for key in keys for sd in ("", "_sd")}
    assert flat["m2_rgb"] == pytest.approx(85.0) and flat["hmvae_it_depth"] == pytest.approx(35.0)
    assert flat["m2_rgb_sd"] == pytest.approx(round(math.sqrt(50.0), 2))
    assert flat["hmvae_both"] == pytest.approx(80.0)
