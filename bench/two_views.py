"""Real two-view data sets that a package ships, for the benchmarks (no download).

- `digits`: scikit-learn's 8x8 digits, left and right half of each image (10 classes, 1,797).
- `breast_cancer`: scikit-learn's Wisconsin breast cancer set (2 classes, 569): each of the
  ten cell-nucleus measurements comes as a mean, a standard error and a worst value over
  the cells of an image; view `mean` holds the means and standard errors (20-d), view
  `worst` the worst values (10-d).

Both use the tests' split (`tests.digits.two_view_set`): 30 % test, 5 % of the rest
labelled, stratified. The UCI multiple-features set is kept aside for an independent check.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.store import FeatureSet, write_features
from tests.digits import digits_views, two_view_set


def breast_cancer_views(*, seed: int = 0, labeled_fraction: float = 0.05,
                        test_fraction: float = 0.3) -> FeatureSet:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = data.data  # columns: 10 means, 10 standard errors, 10 worst values
    views = {"mean": x[:, :20], "worst": x[:, 20:]}
    return two_view_set(views, data.target, seed=seed, labeled_fraction=labeled_fraction,
                        test_fraction=test_fraction, source="sklearn breast cancer")


DATASETS = {"digits": digits_views, "breast_cancer": breast_cancer_views}


def validation_split(data: FeatureSet, seed: int, *, labeled_fraction: float = 0.05,
                     validation_fraction: float = 0.3) -> FeatureSet:
    """The training rows of `data` only, split again as `two_view_set` splits: 30 % become
    the "test" rows (a validation split) and 5 % of the rest are labelled. Test rows of
    `data` are left out, so nothing chosen on this file has seen them."""
    train = ~data.is_test
    return two_view_set({m: x[train] for m, x in data.features.items()}, data.label[train],
                        seed=seed, labeled_fraction=labeled_fraction,
                        test_fraction=validation_fraction,
                        source=f"validation split of {data.attrs.get('source', 'a set')}")


def write_dataset(name: str, path: Path, seed: int) -> Path:
    if name not in DATASETS:
        raise SystemExit(f"--dataset: expected one of {', '.join(DATASETS)}, got {name!r}")
    write_features(path, DATASETS[name](seed=seed))
    return path
