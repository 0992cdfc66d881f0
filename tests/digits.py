"""scikit-learn's bundled digits as real two-view data: left and right half of each image.

`two_view_set` is the split every two-view set of the tests and benchmarks shares: a random
test share, then the same labelled share of each class of the rest (at least one each).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.store import FeatureSet, write_features


def two_view_set(views: dict[str, np.ndarray], target: np.ndarray, *, seed: int,
                 labeled_fraction: float, test_fraction: float, source: str) -> FeatureSet:
    n = len(target)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    is_test = np.zeros(n, bool)
    is_test[order[: round(test_fraction * n)]] = True
    train = np.flatnonzero(~is_test)
    is_labeled = np.zeros(n, bool)
    classes = np.unique(target)
    for c in classes:  # stratified: the same share of each class, at least one each
        rows = rng.permutation(train[target[train] == c])
        is_labeled[rows[: max(1, round(labeled_fraction * len(rows)))]] = True
    return FeatureSet(
        features={m: np.ascontiguousarray(v, dtype=np.float32) for m, v in views.items()},
        label=target.astype(np.int64), is_test=is_test, is_labeled=is_labeled,
        categories=[str(c) for c in classes], attrs={"source": source, "seed": seed},
    )


def digits_views(*, seed: int = 0, labeled_fraction: float = 0.05,
                 test_fraction: float = 0.3) -> FeatureSet:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32)  # [N, 8, 8], values 0..16
    n = len(images)
    views = {"left": images[:, :, :4].reshape(n, -1), "right": images[:, :, 4:].reshape(n, -1)}
    return two_view_set(views, digits.target, seed=seed, labeled_fraction=labeled_fraction,
                        test_fraction=test_fraction, source="sklearn digits")


def write_digits(path: Path, **kwargs) -> Path:
    write_features(path, digits_views(**kwargs))
    return path
