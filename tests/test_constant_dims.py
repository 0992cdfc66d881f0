"""Issue 21.1: a dimension constant on the training rows must not move a prediction.

Fine-tuned fc1 layers have units that never fire on the training images and fire on a
held-out one. Such a dimension is fixed at its training value for every row (training, test,
`predict`), for every likelihood, and the record travels in `model.pt`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.config import TrainConfig
from pipeline.store import write_features
from pipeline.vae.data import LIKELIHOODS, FeatureScaler, prepare
from pipeline.vae.experiment import train_and_evaluate
from pipeline.vae.saved import _arrays, _tensors, choose, load_trained
from tests.digits import digits_views

CPU = torch.device("cpu")


def _rows(n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    """Features [varying x3, dead, constant 3.0], and the training rows' mask."""
    rng = np.random.default_rng(0)
    n = n_train + n_test
    x = np.zeros((n, 5), np.float32)
    x[:, :3] = rng.uniform(0.0, 0.1, (n, 3))
    x[n_train:, 3] = 5.0  # dead on every training row, firing on the test rows
    x[:n_train, 4], x[n_train:, 4] = 3.0, 7.0
    return x, np.arange(n) < n_train


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_a_dimension_constant_in_training_is_fixed_at_its_training_value(likelihood):
    x, train = _rows(40, 10)
    scaler = FeatureScaler.fit({"v": x}, train, likelihood)
    np.testing.assert_array_equal(scaler.constant["v"], [3, 4])
    np.testing.assert_array_equal(scaler.constant_value["v"], [0.0, 3.0])
    test = scaler.transform("v", x[~train])
    as_in_training = x[~train].copy()
    as_in_training[:, 3:] = [0.0, 3.0]
    np.testing.assert_array_equal(test, scaler.transform("v", as_in_training))
    np.testing.assert_array_equal(test[:, 3:], scaler.transform("v", x[train])[:10, 3:])
    # the varying dimensions keep their values (the test rows differ from each other)
    assert np.ptp(test[:, :3], axis=0).min() > 0
    # saved in model.pt's form and read back, the record is the same
    back = FeatureScaler.from_state(_arrays(_tensors(scaler.state())))
    np.testing.assert_array_equal(back.transform("v", x[~train]), test)


def test_constant_is_decided_on_training_rows_only():
    """A dimension that varies only because of test rows is still constant in training."""
    x, train = _rows(40, 10)
    scaler = FeatureScaler.fit({"v": x}, train, "gaussian")
    varying_everywhere = FeatureScaler.fit({"v": x}, np.ones(len(x), bool), "gaussian")
    assert 3 in scaler.constant["v"] and 3 not in varying_everywhere.constant["v"]


def _with_dead_dimensions(data, dead: int, test_value: float, small_view: str):
    """The digits with `small_view` scaled to a typical spread of about 0.05, and `dead`
    dimensions per view that are 0 on every training row and `test_value` on the test rows."""
    features = {}
    for m, x in data.features.items():
        x = x * (0.05 / np.median(x.std(0)[x.std(0) > 0])) if m == small_view else x
        extra = np.zeros((len(x), dead), np.float32)
        extra[data.is_test] = test_value
        features[m] = np.hstack([x, extra]).astype(np.float32)
    return dataclasses.replace(data, features=features)


@pytest.fixture
def one_thread():
    """Small models train ~100x slower when their threads contend on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(**kwargs) -> TrainConfig:
    return TrainConfig(hidden=64, a_dim=16, z_dim=16, lr=1e-3, alpha=50.0, batch_size=64,
                       predict_samples=10, device="cpu", **kwargs)


def _train(tmp_path, name: str, features, cfg: TrainConfig) -> dict[str, float]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.h5"
    write_features(path, features)
    return train_and_evaluate(path, "ss_hmvae_kl", cfg, tmp_path / name, progress=False,
                              live=False)["accuracy"]


def test_dead_dimensions_firing_on_test_rows_move_no_prediction(tmp_path, one_thread):
    """The digits (two views, 5 % labelled, fixed seed), the right view at a typical spread
    of 0.05, 40 dead dimensions per view: at 5.0 on the test rows they give exactly the
    accuracies of the same file with them at 0, and the saved model fixes them as training
    did. Left free (the scaling before this rule), they drag the joint input far down."""
    cfg, data = _config(epochs=8), digits_views(seed=0)
    firing = _with_dead_dimensions(data, 40, 5.0, "right")
    quiet = _train(tmp_path, "quiet", _with_dead_dimensions(data, 40, 0.0, "right"), cfg)
    assert _train(tmp_path, "firing", firing, cfg) == quiet
    classifier = load_trained(tmp_path / "firing")
    trial = prepare(firing, cfg.likelihood, CPU)
    x = {m: firing.features[m][firing.is_test] for m in trial.modalities}
    for m in trial.modalities:
        assert len(classifier.scaler.constant[m]) >= 40
        np.testing.assert_array_equal(classifier.scaler.transform(m, x[m]),
                                      trial.test.x[m].numpy())
    free = dataclasses.replace(classifier, scaler=dataclasses.replace(
        classifier.scaler, constant={}, constant_value={}))
    joint = choose(free, ("left", "right"))
    accuracy = np.mean(free.classify(x, joint)[0] == firing.label[firing.is_test])
    assert accuracy < quiet["left+right"] - 0.2, (accuracy, quiet)


@pytest.mark.slow
def test_dead_dimensions_keep_the_accuracy_of_the_file_without_them(tmp_path, one_thread):
    """The issue's check: with the dead dimensions (5.0 on the test rows) the accuracy of
    each input is within a point of the same file without them. Extra input dimensions
    change the initial weights, so one seed differs by up to 5 points either way after a
    short run (measured); the check is on the mean of seeds 0-4 after 40 epochs, at the
    settings it was measured with, the learned-variance Gaussian in fp32. Seeds 0-2 gave
    +0.8 / +0.5 / +0.9 points (joint / left / right) with torch's default CPU Adam and, with
    the fused Adam (the same formula rounded otherwise), -1.2 points on the right input:
    the noise of a 3-seed mean is the size of the bound, so the mean is over 5 seeds. Under
    the paper's mean-only decoder in bf16 seeds 0-2 gave +1.4 points on the joint input (the
    dead dimensions ahead): seed noise of the same size, not the 80-point loss the rule
    removes."""
    data = digits_views(seed=0)
    files = {"without": _with_dead_dimensions(data, 0, 0.0, "right"),
             "firing": _with_dead_dimensions(data, 40, 5.0, "right")}
    mean = {}
    for name, features in files.items():
        runs = [_train(tmp_path / str(seed), name, features,
                       _config(epochs=40, seed=seed, likelihood="gaussian", precision="fp32"))
                for seed in range(5)]
        mean[name] = {k: np.mean([r[k] for r in runs]) for k in runs[0]}
    for key, value in mean["without"].items():
        assert abs(mean["firing"][key] - value) <= 0.01, (key, mean)
