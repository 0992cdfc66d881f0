"""The classical models: the co-training loop on cases worked out by hand, and the stage's files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.classical import CLASSICAL
from pipeline.classical.cotrain import CoTrainSettings, cotrain
from pipeline.classical.experiment import train_and_evaluate_classical
from pipeline.config import MODEL_NAMES, ClassicalConfig
from pipeline.errors import UserError
from pipeline.stages.train import main as train_main
from pipeline.store import FeatureSet, write_features
from tests.digits import digits_views

# Two categories, one feature per view. Labelled: category 0 at -1, -1.5 and category 1 at
# 1, 1.5 in both views, so each view's SVM scores an example by how far right it lies.
LABELLED = {"a": np.array([[-1.0], [-1.5], [1.0], [1.5]]),
            "b": np.array([[-1.0], [-1.5], [1.0], [1.5]])}
Y = np.array([0, 0, 1, 1])
# Six unlabelled examples (rows 0..5). View a: row 0 is the most negative (surest 0), row 5
# the most positive (surest 1). View b: row 1 surest 0, row 3 surest 1, although row 3 is
# truly a 0: b hands it to a as a 1.
UNLABELLED = {"a": np.array([[-3.0], [-2.0], [-1.2], [0.4], [2.0], [5.0]]),
              "b": np.array([[-0.3], [-4.0], [-0.6], [3.0], [1.5], [0.8]])}
TRUTH = np.array([0, 0, 0, 0, 1, 1])


def handed(result, round_, source):
    (h,) = [h for h in result.handovers if h.round == round_ and h.source == source]
    return h.rows.tolist(), h.labels.tolist(), h.target


def test_round_one_hands_each_views_surest_per_category_to_the_other():
    result = cotrain(LABELLED, Y, UNLABELLED, 2, CoTrainSettings(rule="top", quota=1, rounds=1))
    assert handed(result, 1, "a") == ([0, 5], [0, 1], "b")
    assert handed(result, 1, "b") == ([1, 3], [0, 1], "a")
    # the labels are b's predictions: row 3 is truly a 0 and reaches a as a 1
    rows, labels = result.training_set("a")
    assert dict(zip(rows.tolist(), labels.tolist(), strict=True)) == {1: 0, 3: 1}
    assert TRUTH[3] == 0
    # the final SVMs learnt from what they were handed: a now has 3 examples of category 1
    assert result.rounds == 1 and result.training_set("b")[0].tolist() == [0, 5]


def test_round_two_draws_only_from_what_is_left():
    result = cotrain(LABELLED, Y, UNLABELLED, 2, CoTrainSettings(rule="top", quota=1, rounds=5))
    # round 1 as above; left: rows 2 (a -1.2, b -0.6) and 4 (a 2.0, b 1.5), which both
    # views pick (each the surest, being the only, of its category), each handing its own
    # labels to the other
    assert handed(result, 2, "a") == ([2, 4], [0, 1], "b")
    assert handed(result, 2, "b") == ([2, 4], [0, 1], "a")
    assert result.rounds == 2  # the pool is empty after round 2: the loop stops
    assert result.training_set("b")[0].tolist() == [0, 5, 2, 4]


def test_diverse_rule_takes_one_of_near_duplicates():
    # View a's category-1 candidates: three near-copies at ~5 and one at 2. With a quota of
    # 2 the top rule takes two copies; the diverse rule one copy (the surest) and the 2.
    unlabelled = {"a": np.array([[-3.0], [5.0], [5.02], [4.99], [2.0]]),
                  "b": np.array([[-3.0], [0.2], [0.1], [0.3], [-0.2]])}
    top = cotrain(LABELLED, Y, unlabelled, 2, CoTrainSettings(rule="top", quota=2, rounds=1))
    diverse = cotrain(LABELLED, Y, unlabelled, 2,
                      CoTrainSettings(rule="diverse", quota=2, rounds=1))
    assert handed(top, 1, "a")[:2] == ([0, 1, 2], [0, 1, 1])
    assert handed(diverse, 1, "a")[:2] == ([0, 2, 4], [0, 1, 1])


@pytest.mark.parametrize("rule", ["top", "diverse"])
def test_quota_per_category_view_and_round(rule):
    data = digits_views(seed=0)
    train = ~data.is_test
    lab, unl = train & data.is_labeled, train & ~data.is_labeled
    views = data.modalities
    result = cotrain({v: data.features[v][lab] for v in views}, data.label[lab],
                     {v: data.features[v][unl] for v in views}, 10,
                     CoTrainSettings(rule=rule, quota=4, rounds=3))
    counts = []
    for h in result.handovers:
        per_category = np.bincount(h.labels, minlength=10)
        assert per_category.max() <= 4, (h.round, h.source, per_category)
        counts.append(per_category)
    assert max(c.max() for c in counts) == 4  # the quota binds somewhere
    moved = np.concatenate([h.rows for h in result.handovers])
    # a row moves at most twice (both views picked it in the same round), never in two rounds
    for r in range(1, 4):
        this = {x for h in result.handovers if h.round == r for x in h.rows.tolist()}
        other = {x for h in result.handovers if h.round != r for x in h.rows.tolist()}
        assert not this & other
    assert moved.max() < unl.sum()


def test_test_rows_never_reach_the_training(tmp_path):
    """Replacing every test row's features and labels changes nothing that was learnt."""
    data = digits_views(seed=1)
    other = FeatureSet(
        features={m: np.where(data.is_test[:, None], np.float32(16) - x, x)
                  for m, x in data.features.items()},
        label=np.where(data.is_test, (data.label + 3) % 10, data.label),
        is_test=data.is_test, is_labeled=data.is_labeled, categories=data.categories)
    states = []
    for name, fs in (("a", data), ("b", other)):
        write_features(tmp_path / f"{name}.h5", fs)
        metrics = train_and_evaluate_classical(tmp_path / f"{name}.h5", "ct_svm",
                                               ClassicalConfig(), tmp_path / name, progress=False,
                                               live=False)
        states.append(torch.load(tmp_path / name / "model.pt", weights_only=True))
        assert metrics["n_test"] == int(data.is_test.sum())
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        if isinstance(states[0][key], torch.Tensor):
            assert torch.equal(states[0][key], states[1][key]), key
    # the handed rows index the unlabelled set only
    n_unlabelled = int((~data.is_test & ~data.is_labeled).sum())
    assert int(states[0]["left/rows"].max()) < n_unlabelled


def test_stage_writes_the_train_stage_files(tmp_path, capsys):
    features = tmp_path / "digits.h5"
    write_features(features, digits_views(seed=0))
    out = tmp_path / "ct"
    assert train_main(["--params", "params.yaml", "--features", str(features), "--model",
                       "ct_svm", "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["accuracy"]) == ["left", "right", "left+right"]
    assert metrics["accuracy_by_method"]["joint"]["left+right"] == metrics["accuracy"][
        "left+right"]
    # the two views together beat each alone on the digits (measured: 88 vs 80 / 81 %)
    assert metrics["accuracy"]["left+right"] > max(metrics["accuracy"]["left"],
                                                   metrics["accuracy"]["right"])
    assert metrics["accuracy"]["left"] > 0.5
    # the outputs dvc.yaml declares for every train run
    for name in ("config.json", "metrics.json", "model.pt", "dvclive/metrics.json"):
        assert (out / name).is_file(), name
    assert list((out / "dvclive/plots/metrics").rglob("*.tsv"))
    assert "ct_svm: accuracy left" in capsys.readouterr().out


def test_label_spreading_rows_and_determinism(tmp_path):
    features = tmp_path / "digits.h5"
    write_features(features, digits_views(seed=0))
    runs = [train_and_evaluate_classical(features, "label_spreading", ClassicalConfig(),
                                         tmp_path / f"ls{i}", progress=False, live=False)
            for i in range(2)]
    assert runs[0]["accuracy"] == runs[1]["accuracy"]
    assert list(runs[0]["accuracy_by_method"]["joint"]) == ["left", "right", "left+right"]
    assert runs[0]["accuracy"]["left+right"] > 0.8  # measured 92 %


@pytest.mark.parametrize("model", ["ct_svm", "cotraining"])
def test_one_modality_file_is_refused_before_writing(tmp_path, capsys, model):
    data = digits_views(seed=0)
    features = tmp_path / "one.h5"
    write_features(features, FeatureSet(
        features={"left": data.features["left"]}, label=data.label, is_test=data.is_test,
        is_labeled=data.is_labeled, categories=data.categories))
    out = tmp_path / "out"
    assert train_main(["--params", "params.yaml", "--features", str(features), "--model",
                       model, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(features) in err and "needs exactly two modalities" in err
    assert not out.exists()
    with pytest.raises(UserError, match="needs exactly two modalities"):
        train_and_evaluate_classical(features, model, ClassicalConfig(), out)


def test_registry_names_are_valid_train_models():
    assert set(CLASSICAL) <= set(MODEL_NAMES)
    assert not set(CLASSICAL) & set(__import__("pipeline.vae").vae.MODELS)


def test_params_yaml_trains_them():
    import yaml

    models = yaml.safe_load(Path("params.yaml").read_text())["train"]["models"]
    assert set(CLASSICAL) <= set(models)


def test_label_spreading_counts_unreached_test_examples_as_wrong(tmp_path):
    """Two far-apart groups; only group A has labels, so no label reaches group B's rows."""
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (30, 3))
    b = rng.normal(100, 1, (30, 3))
    x = np.concatenate([a, b]).astype(np.float32)
    label = np.array([0, 1] * 15 + [0] * 30)
    is_test = np.zeros(60, bool)
    is_test[[0, 1, 2, 3, 40, 41, 42]] = True  # 4 in A, 3 in B
    is_labeled = np.zeros(60, bool)
    is_labeled[10:20] = True  # labels in A only
    write_features(tmp_path / "f.h5", FeatureSet(
        features={"rgb": x}, label=label, is_test=is_test, is_labeled=is_labeled,
        categories=["c0", "c1"]))
    metrics = train_and_evaluate_classical(tmp_path / "f.h5", "label_spreading", ClassicalConfig(),
                                           tmp_path / "out", progress=False, live=False)
    assert metrics["test_unreached"] == {"rgb": 3}
    # B's three test rows are all category 0; predicting 0 for them would score them right
    assert metrics["accuracy"]["rgb"] <= 4 / 7
