"""The classical models: the co-training loop on cases worked out by hand, and the stage's files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.classical import CLASSICAL
from pipeline.classical.cotrain import CoTrainSettings, columns, cotrain
from pipeline.classical.experiment import _split, train_and_evaluate_classical
from pipeline.classical.validation import deal_folds, keep_round
from pipeline.config import CLASSICAL_MODELS, ClassicalConfig
from pipeline.errors import UserError
from pipeline.stages.classical import main as classical_main
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
@pytest.mark.parametrize("quota", [4, 0])
def test_quota_per_category_view_and_round(rule, quota):
    """Each round, each view hands the other exactly the quota of every category while the
    pool holds more; quota 0 spreads the pool over the rounds: ceil(M / (2 views K rounds)).

    Three categories far apart in both views (each view's SVM labels every example right),
    30 unlabelled of each: three rounds take at most 3 * 2 * 5 = 30 of a category, and the
    last round still finds more than the quota of each."""
    rng = np.random.default_rng(0)
    k, per_category, rounds = 3, 30, 3

    def view(labels, d):
        return 10.0 * np.eye(k, d)[labels] + rng.normal(0, 1, (len(labels), d))

    y = np.repeat(np.arange(k), 2)
    truth = np.repeat(np.arange(k), per_category)
    labelled = {"a": view(y, 4), "b": view(y, 5)}
    unlabelled = {"a": view(truth, 4), "b": view(truth, 5)}
    result = cotrain(labelled, y, unlabelled, k,
                     CoTrainSettings(rule=rule, quota=quota, rounds=rounds))
    expected = quota or -(-len(truth) // (2 * k * rounds))
    assert expected == (4 if quota else 5)
    assert [(h.round, h.source) for h in result.handovers] == [
        (r, v) for r in range(1, rounds + 1) for v in ("a", "b")]
    for h in result.handovers:
        np.testing.assert_array_equal(truth[h.rows], h.labels)  # every one labelled right
        np.testing.assert_array_equal(np.bincount(h.labels, minlength=k), np.full(k, expected),
                                      err_msg=f"round {h.round}, from {h.source}")
    # a row moves at most twice (both views picked it in the same round), never in two rounds
    for r in range(1, rounds + 1):
        this = {x for h in result.handovers if h.round == r for x in h.rows.tolist()}
        other = {x for h in result.handovers if h.round != r for x in h.rows.tolist()}
        assert not this & other


def test_test_rows_never_reach_the_training(tmp_path):
    """Replacing every test row's features and labels changes nothing that was learnt."""
    data = digits_views(seed=1)
    other = FeatureSet(
        features={m: np.where(data.is_test[:, None], np.float32(16) - x, x)
                  for m, x in data.features.items()},
        label=np.where(data.is_test, (data.label + 3) % 10, data.label),
        is_test=data.is_test, is_labeled=data.is_labeled, categories=data.categories)
    states, choices = [], []
    for name, fs in (("a", data), ("b", other)):
        write_features(tmp_path / f"{name}.h5", fs)
        metrics = train_and_evaluate_classical(tmp_path / f"{name}.h5", "ct_svm",
                                               ClassicalConfig(seed=1), tmp_path / name,
                                               progress=False, live=False)
        states.append(torch.load(tmp_path / name / "model.pt", weights_only=True))
        assert metrics["n_test"] == int(data.is_test.sum())
        choices.append((metrics["rounds_kept"], metrics["validation_accuracy"]))
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        if isinstance(states[0][key], torch.Tensor):
            assert torch.equal(states[0][key], states[1][key]), key
    # the round each column keeps, and the held-out curve that chose it, are the same
    assert choices[0] == choices[1]
    assert any(choices[0][0].values())  # some round was kept: the rows were compared
    # the handed rows index the unlabelled set only
    n_unlabelled = int((~data.is_test & ~data.is_labeled).sum())
    rows = torch.cat([states[0]["left/rows"], states[0]["right/rows"]])
    assert rows.numel() and int(rows.max()) < n_unlabelled


def test_stage_writes_the_train_stage_files(tmp_path, capsys):
    features = tmp_path / "digits.h5"
    write_features(features, digits_views(seed=0))
    out = tmp_path / "ct"
    assert classical_main(["--params", "params.yaml", "--features", str(features), "--model",
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
    assert classical_main(["--params", "params.yaml", "--features", str(features), "--model",
                           model, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(features) in err and "needs exactly two modalities" in err
    assert not out.exists()
    with pytest.raises(UserError, match="needs exactly two modalities"):
        train_and_evaluate_classical(features, model, ClassicalConfig(), out)


def test_registry_names_are_valid_train_models():
    assert set(CLASSICAL) == set(CLASSICAL_MODELS)
    assert not set(CLASSICAL) & set(__import__("pipeline.vae").vae.MODELS)


def test_params_yaml_trains_them():
    import yaml

    params = yaml.safe_load(Path("params.yaml").read_text())
    assert set(CLASSICAL) <= set(params["classical"]["models"])
    # the classical section is ClassicalConfig's defaults, key for key
    defaults = dataclasses.asdict(ClassicalConfig())
    assert {k: tuple(v) if isinstance(v, list) else v
            for k, v in params["classical"].items()} == defaults
    assert ClassicalConfig().models == tuple(CLASSICAL)


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


@pytest.mark.parametrize("model", ["ct_svm", "cotraining"])
def test_accuracy_start_is_the_labelled_only_svm(tmp_path, model):
    """`accuracy_start` is what an SVM fitted on the labelled rows alone scores, with the same
    features, PCA and penalty, fitted here without the co-training code."""
    from sklearn.linear_model import SGDClassifier

    data = digits_views(seed=2)
    write_features(tmp_path / "d.h5", data)
    cfg = ClassicalConfig(seed=2, penalty=1e-3)
    metrics = train_and_evaluate_classical(tmp_path / "d.h5", model, cfg, tmp_path / "out",
                                           progress=False, live=False)
    split = _split(tmp_path / "d.h5", model, data, cfg)
    margins = {}
    for view in ("left", "right"):
        svm = SGDClassifier(loss="hinge", alpha=1e-3, max_iter=cfg.svm_epochs, tol=None,
                            random_state=2).fit(split.labelled[view], split.y)
        margins[view] = svm.decision_function(split.test[view])
    expected = {v: float((m.argmax(1) == split.y_test).mean()) for v, m in margins.items()}
    expected["left+right"] = float(
        ((margins["left"] + margins["right"]).argmax(1) == split.y_test).mean())
    assert metrics["accuracy_start"] == expected
    # each column is the start's where it keeps round 0
    for key, kept in metrics["rounds_kept"].items():
        if kept == 0:
            assert metrics["accuracy"][key] == expected[key]


def test_keep_round_needs_a_clear_gain_over_the_start():
    start = np.array([True] * 20 + [False] * 20)
    # round 1 breaks 5 of the start's successes and fixes 2: worse, not kept
    worse = start.copy()
    worse[:5], worse[20:22] = False, True
    # round 2 fixes 2 errors: a gain of 2 of sqrt(2) rows, clear (2 > 1.41)
    fixes_two = start.copy()
    fixes_two[20:22] = True
    # round 3 fixes 4 and breaks 2: +2 of sqrt(6) = 2.45, not clear, though as accurate
    mixed = start.copy()
    mixed[20:24], mixed[:2] = True, False
    assert keep_round(np.stack([start, worse])) == 0
    assert keep_round(np.stack([start, worse, mixed])) == 0
    assert keep_round(np.stack([start, worse, fixes_two, mixed])) == 2
    # a tie between two clear rounds goes to the earlier
    assert keep_round(np.stack([start, fixes_two, fixes_two])) == 1


def test_deal_folds_keeps_each_category_in_every_training_part():
    y = np.array([0] * 7 + [1] * 2 + [2] * 5)
    fold = deal_folds(y, 3, seed=0)
    assert sorted(np.bincount(fold[y == 0], minlength=3)) == [2, 2, 3]
    for k in range(3):
        assert set(y[fold != k]) == {0, 1, 2}


def test_selection_stops_where_handed_labels_hurt(tmp_path):
    """View b is sure that 60 unlabelled category-0 rows are 1s and hands them to view a,
    where they sit on a's labelled 0s; a hands them back to b as 0s at b's 1s. Every round
    hurts both views on held-out labelled rows, so the labelled-only SVMs are kept."""
    rng = np.random.default_rng(0)
    n_l, n_u, n_t = 12, 60, 40
    y_l = np.repeat([0, 1], n_l // 2)
    y_t = np.repeat([0, 1], n_t // 2)
    side = lambda y: np.where(y == 1, 1.0, -1.0)  # noqa: E731
    jitter = lambda n: rng.normal(0, 0.05, n)  # noqa: E731
    a = np.concatenate([side(y_l) + jitter(n_l), -1 + jitter(n_u), side(y_t) + jitter(n_t)])
    b = np.concatenate([side(y_l) + jitter(n_l), 1 + jitter(n_u), side(y_t) + jitter(n_t)])
    label = np.concatenate([y_l, np.zeros(n_u, np.int64), y_t])
    is_test = np.arange(n_l + n_u + n_t) >= n_l + n_u
    is_labeled = np.arange(n_l + n_u + n_t) < n_l
    fs = FeatureSet(features={"a": a[:, None].astype(np.float32),
                              "b": b[:, None].astype(np.float32)},
                    label=label, is_test=is_test, is_labeled=is_labeled, categories=["0", "1"])
    write_features(tmp_path / "f.h5", fs)
    cfg = ClassicalConfig(quota=10, rounds=3)
    metrics = train_and_evaluate_classical(tmp_path / "f.h5", "ct_svm", cfg, tmp_path / "out",
                                           progress=False, live=False)
    assert metrics["rounds_kept"] == {"a": 0, "b": 0, "a+b": 0}
    assert metrics["accuracy"] == metrics["accuracy_start"]
    assert metrics["n_handed"] == {"a": 0, "b": 0}
    # the case does hurt: keeping the last round would have scored lower on both views
    split = _split(tmp_path / "f.h5", "ct_svm", fs, cfg)
    full = cotrain(split.labelled, split.y, split.unlabelled, 2,
                   CoTrainSettings.from_config(cfg, "top"))
    last = columns(full.classifiers, split.test, split.y_test, 2)
    assert last["a"] < metrics["accuracy_start"]["a"]
    assert last["b"] < metrics["accuracy_start"]["b"]
