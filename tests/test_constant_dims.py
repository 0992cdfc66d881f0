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

from pipeline.store import write_features
from pipeline.vae.data import LIKELIHOODS, FeatureScaler, prepare
from pipeline.vae.experiment import train_and_evaluate
from pipeline.vae.saved import _arrays, _tensors, load_trained
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


def test_dead_dimensions_firing_on_test_rows_leave_the_accuracy(tmp_path):
    """The issue's check, on the digits (two views, 5 % labelled, fixed seed): a view of
    typical spread 0.05, plus 40 dead dimensions per view at 5.0 on the test rows, gives
    the accuracy of the same file without them within a point, and exactly that of the
    same file with the dead dimensions at 0 on the test rows; `predict`'s loaded model
    fixes them too."""
    from pipeline.config import TrainConfig

    cfg = TrainConfig(epochs=8, hidden=64, a_dim=16, z_dim=16, lr=1e-3, alpha=50.0,
                      batch_size=64, predict_samples=10, device="cpu")
    data = digits_views(seed=0)
    files = {"without": _with_dead_dimensions(data, 0, 0.0, "right"),
             "quiet": _with_dead_dimensions(data, 40, 0.0, "right"),
             "firing": _with_dead_dimensions(data, 40, 5.0, "right")}
    accuracy = {}
    for name, features in files.items():
        path = tmp_path / f"{name}.h5"
        write_features(path, features)
        accuracy[name] = train_and_evaluate(path, "ss_hmvae_kl", cfg, tmp_path / name,
                                            progress=False, live=False)["accuracy"]
    assert accuracy["firing"] == accuracy["quiet"]
    for key, value in accuracy["without"].items():
        assert abs(accuracy["firing"][key] - value) <= 0.01, (key, accuracy)
    # the saved model fixes them as training did
    classifier = load_trained(tmp_path / "firing")
    trial = prepare(files["firing"], cfg.likelihood, CPU)
    x = {m: files["firing"].features[m][files["firing"].is_test] for m in trial.modalities}
    for m in trial.modalities:
        assert len(classifier.scaler.constant[m]) >= 40
        np.testing.assert_array_equal(classifier.scaler.transform(m, x[m]),
                                      trial.test.x[m].numpy())
