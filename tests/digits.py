"""scikit-learn's bundled digits as real two-view data: left and right half of each image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.store import FeatureSet, write_features


def digits_views(*, seed: int = 0, labeled_fraction: float = 0.05,
                 test_fraction: float = 0.3) -> FeatureSet:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32)  # [N, 8, 8], values 0..16
    n = len(images)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    is_test = np.zeros(n, bool)
    is_test[order[: round(test_fraction * n)]] = True
    train = np.flatnonzero(~is_test)
    is_labeled = np.zeros(n, bool)
    # Stratified: the same share of each class, at least one each.
    for c in range(10):
        rows = rng.permutation(train[digits.target[train] == c])
        is_labeled[rows[: max(1, round(labeled_fraction * len(rows)))]] = True
    return FeatureSet(
        features={"left": images[:, :, :4].reshape(n, -1),
                  "right": images[:, :, 4:].reshape(n, -1)},
        label=digits.target.astype(np.int64), is_test=is_test, is_labeled=is_labeled,
        categories=[str(c) for c in range(10)], attrs={"source": "sklearn digits", "seed": seed},
    )


def write_digits(path: Path, **kwargs) -> Path:
    write_features(path, digits_views(**kwargs))
    return path
