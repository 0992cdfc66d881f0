"""Trials from testinstance_ids.txt, the labelled subset, and the three data stages' CLI."""

import json

import numpy as np
import pytest

from pipeline.__main__ import main as cli
from pipeline.rgbd.download import download_dataset, extract_zip
from pipeline.rgbd.splits import TrialsError, format_trials, make_split, make_splits, parse_trials
from pipeline.store import ImagesWriter, read_images_index, read_split

TEXT = """****** trial 1 ******
apple_2
cell_phone_1

****** trial 2 ******
apple_1
cell_phone_3
"""


def test_trials_file_round_trip():
    trials = parse_trials(TEXT)
    assert trials == {1: ["apple_2", "cell_phone_1"], 2: ["apple_1", "cell_phone_3"]}
    assert parse_trials(format_trials(trials)) == trials


@pytest.mark.parametrize(("text", "message"), [
    ("apple_1\n****** trial 1 ******\n", "before the first"),
    ("", "no '\\*\\*\\*\\*\\*\\* trial N"),
    ("****** trial 1 ******\na_1\n****** trial 1 ******\n", "trial 1 appears twice"),
])
def test_malformed_trials_file(text, message):
    with pytest.raises(TrialsError, match=message):
        parse_trials(text, source="ids.txt")


def frames(n_per_instance: int = 40):
    instance = np.array([f"{c}_{k}" for c in ("apple", "cell_phone") for k in (1, 2, 3)
                         for _ in range(n_per_instance)], dtype=object)
    label = np.array([0 if i.startswith("apple") else 1 for i in instance])
    return instance, label


def test_trial_holds_out_its_instances_and_labels_a_stratified_fraction():
    instance, label = frames()
    split = make_split(1, ["apple_2", "cell_phone_1"], instance=instance, label=label,
                       labeled_fraction=0.05, seed=0)
    np.testing.assert_array_equal(split.is_test, np.isin(instance, ["apple_2", "cell_phone_1"]))
    assert not (split.is_test & split.is_labeled).any()
    for c in (0, 1):  # 80 training frames per category -> 4 labelled
        assert split.is_labeled[label == c].sum() == 4
    again = make_split(1, ["apple_2", "cell_phone_1"], instance=instance, label=label,
                       labeled_fraction=0.05, seed=0)
    np.testing.assert_array_equal(again.is_labeled, split.is_labeled)
    other = make_split(1, ["apple_2", "cell_phone_1"], instance=instance, label=label,
                       labeled_fraction=0.05, seed=1)
    assert not np.array_equal(other.is_labeled, split.is_labeled)


def test_at_least_one_labelled_per_category():
    instance, label = frames(n_per_instance=3)
    split = make_split(1, ["apple_1", "cell_phone_1"], instance=instance, label=label,
                       labeled_fraction=0.01, seed=0)
    assert [split.is_labeled[label == c].sum() for c in (0, 1)] == [1, 1]


def test_absent_instance_or_trial_is_a_clear_error():
    instance, label = frames(2)
    with pytest.raises(TrialsError, match="trial 1 holds out apple_9, absent from the images"):
        make_split(1, ["apple_9"], instance=instance, label=label, labeled_fraction=0.05, seed=0)
    with pytest.raises(TrialsError, match=r"no trial 3 .*holds trials 1, 2"):
        make_splits(parse_trials(TEXT), [3], instance=instance, label=label,
                    labeled_fraction=0.05, seed=0)


def test_stages_from_download_to_split(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("profile: paper\n")
    tiny = ["--set", "download.source=synthetic", "--set", "download.synthetic_categories=3",
            "--set", "download.synthetic_instances=2", "--set", "download.synthetic_frames=1",
            "--set", "preprocess.size=16", "--set", "preprocess.workers=1",
            "--set", "split.trials=[1, 2]"]
    assert cli(["download", "--out", "raw", "--cache", "cache", "--no-progress", *tiny]) == 0
    assert cli(["download", "--out", "raw", "--cache", "cache", "--no-progress", *tiny]) == 0
    assert "already complete" in capsys.readouterr().out
    assert cli(["preprocess", "--raw", "raw", "--out", "images.h5", "--no-progress",
                *tiny]) == 0
    report = json.loads((tmp_path / "preprocess-report.json").read_text())
    assert report["written"] == 18 and report["skipped"] == []
    assert json.loads((tmp_path / "images-config.json").read_text())["preprocess"]["size"] == 16
    assert cli(["split", "--images", "images.h5", "--trials-file",
                "raw/testinstance_ids.txt", "--out", "splits.h5", *tiny]) == 0
    index = read_images_index("images.h5")
    split = read_split("splits.h5", 2, frames=index.frame)
    assert len(split.test_instances) == 3 and split.is_test.sum() == 9
    assert (tmp_path / "raw" / "config.json").is_file()
    assert (tmp_path / "splits-config.json").is_file()


def test_stage_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text("profile: paper\n")
    code = cli(["split", "--params", str(tmp_path / "params.yaml"), "--images",
                str(tmp_path / "none.h5"), "--out", str(tmp_path / "s.h5")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "none.h5: file not found" in err
    code = cli(["preprocess", "--params", str(tmp_path / "params.yaml"), "--raw",
                str(tmp_path / "nothing"), "--out", str(tmp_path / "i.h5"), "--no-progress"])
    assert code == 2 and "dataset folder not found" in capsys.readouterr().err


@pytest.mark.parametrize(("trial", "message"), [
    (["apple_1"], r"trial 1 holds out 0 instances of 'cell_phone' \(none\)"),
    (["apple_1", "apple_2"], r"trial 1 holds out 2 instances of 'apple' "
                             r"\(apple_1, apple_2\)"),
    (["apple_1", "cell_phone_1", "cell_phone_1"], "trial 1 holds out 2 instances of 'cell_phone'"),
    ([], "trial 1 lists no instance"),
])
def test_each_trial_holds_out_one_instance_per_category(trial, message):
    instance, label = frames(2)
    with pytest.raises(TrialsError, match=r"ids\.txt: " + message):
        make_splits({1: trial}, [1], instance=instance, label=label, labeled_fraction=0.05,
                    seed=0, source="ids.txt")


def test_a_category_s_only_instance_cannot_be_held_out():
    instance, label = frames(2)
    keep = ~np.isin(instance, ["apple_2", "apple_3"])  # apple_1 is the only apple left
    instance, label = instance[keep], label[keep]
    with pytest.raises(TrialsError, match=r"ids\.txt: trial 4 holds out apple_1, the only "
                                          "instance of 'apple'"):
        make_splits({4: ["apple_1", "cell_phone_2"]}, [4], instance=instance, label=label,
                    labeled_fraction=0.05, seed=0, source="ids.txt")


def test_split_stage_names_the_trials_file_and_trial(tmp_path, capsys):
    instance, label = frames(1)
    images = tmp_path / "images.h5"
    with ImagesWriter(images, size=4, categories=["apple", "cell_phone"]) as writer:
        n = len(instance)
        writer.append(rgb=np.zeros((n, 4, 4, 3), np.uint8), depth=np.zeros((n, 4, 4, 3), np.uint8),
                      label=label.tolist(), frame=[f"{i}_1_1" for i in instance],
                      instance=instance.tolist(), video=[1] * n, index=[1] * n)
    ids = tmp_path / "ids.txt"
    ids.write_text(format_trials({1: ["apple_1", "cell_phone_1"], 2: ["apple_1", "apple_2"]}))
    (tmp_path / "params.yaml").write_text("profile: paper\n")
    code = cli(["split", "--params", str(tmp_path / "params.yaml"), "--images", str(images),
                "--trials-file", str(ids), "--out", str(tmp_path / "s.h5"),
                "--set", "split.trials=[1, 2]"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"{ids}: trial 2 holds out 2 instances of 'apple'" in err
    assert not (tmp_path / "s.h5").exists()


def test_preprocess_refuses_a_folder_the_download_did_not_finish(tiny_archive, tmp_path,
                                                                 capsys):
    archive, trials = tiny_archive
    raw, params = tmp_path / "raw", tmp_path / "params.yaml"
    params.write_text("profile: paper\n")
    extract_zip(archive, raw)  # every frame there, but not by the download stage
    argv = ["preprocess", "--params", str(params), "--raw", str(raw), "--out",
            str(tmp_path / "images.h5"), "--no-progress", "--set", "preprocess.size=16",
            "--set", "preprocess.workers=1"]
    code = cli(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"{raw}: not a complete download" in err
    assert not (tmp_path / "images.h5").exists()
    download_dataset(raw, url=str(archive), splits_url=str(trials), cache=tmp_path / "cache",
                     progress=False)
    assert cli(argv) == 0 and (tmp_path / "images.h5").is_file()
