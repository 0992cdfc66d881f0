"""The `train` stage's work for the classical models: fit, evaluate, write DIR's files.

Writes what the generative models write, so DVC's outputs and the report are the same:
`metrics.json` (`accuracy` keyed rgb / depth / rgb+depth, `accuracy_by_method`),
`config.json`, `dvclive/` (per round: examples handed over and how many of their labels
were right, judged on the training rows' labels, never the test rows'), and `model.pt`
(format `ssmvae-classical/1`: the final training sets, i.e. which unlabelled rows each view
learnt from and with which labels; `predict` does not load it). Each view's features are
standardised and projected on their first PCA_DIMS principal components, both fitted on the
training rows (labelled and unlabelled, never test): the SVMs, k-means and the kNN graph
then work in 256 dimensions, not 4096, which is what makes the paper's scale take minutes on
a CPU.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import torch_save, write_json
from pipeline.classical import CLASSICAL
from pipeline.classical.cotrain import CoTrainResult, CoTrainSettings, cotrain, scores
from pipeline.config import TrainConfig
from pipeline.errors import UserError
from pipeline.store import FeatureSet, read_features

FORMAT = "ssmvae-classical/1"  # model.pt of a classical model (predict does not load it)

# The co-training rules and their settings (docs/models.md says why these values).
COTRAIN = {"ct_svm": CoTrainSettings(rule="top"), "cotraining": CoTrainSettings(rule="diverse")}
# Label spreading: a kNN graph with this many neighbours, fixed in advance (so no test label
# picks it; scikit-learn's default is 7).
SPREAD_NEIGHBOURS = 10
SPREAD_ALPHA = 0.2  # scikit-learn's default clamping
PCA_DIMS = 256  # per view


@dataclasses.dataclass(frozen=True)
class Split:
    """A features file's rows as the models see them: standardised and projected on their
    principal components (per view, fitted on the training rows), in three sets."""

    labelled: dict[str, np.ndarray]
    y: np.ndarray  # the labelled rows' labels
    unlabelled: dict[str, np.ndarray]
    y_unlabelled: np.ndarray  # for the diagnostics only (pseudo-label accuracy)
    test: dict[str, np.ndarray]
    y_test: np.ndarray
    n_classes: int


def train_and_evaluate_classical(features: Path, model_name: str, cfg: TrainConfig, out: Path,
                                 *, progress: bool = True, live: bool = True) -> dict[str, Any]:
    """Check the file, fit `model_name`, evaluate every input, write `out/metrics.json`."""
    if model_name not in CLASSICAL:
        raise UserError(f"--model: {model_name!r} is not one of {', '.join(CLASSICAL)}")
    data = read_features(features)
    split = _split(features, model_name, data, cfg.seed)  # all checks before out/ exists
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", dataclasses.asdict(cfg))
    if model_name in COTRAIN:
        settings = dataclasses.replace(COTRAIN[model_name], seed=cfg.seed)
        result = cotrain(split.labelled, split.y, split.unlabelled, split.n_classes, settings,
                         progress=progress)
        by_method = _evaluate_cotrained(result, split)
        extra = {"rounds": result.rounds, "settings": dataclasses.asdict(settings),
                 "n_handed": {v: int(result.training_set(v)[0].size) for v in split.labelled}}
        state = {v: result.training_set(v) for v in split.labelled}
        history = _history(result, split)
    else:
        by_method, transduced, unreached = _label_spreading(split)
        extra = {"n_neighbors": SPREAD_NEIGHBOURS, "alpha": SPREAD_ALPHA,
                 "test_unreached": unreached}
        state = {k: (np.arange(v.size), v) for k, v in transduced.items()}
        history = []
    accuracy = {k: v for method in by_method.values() for k, v in method.items()}
    metrics = {"model": model_name, "accuracy": accuracy, "accuracy_by_method": by_method,
               **extra, "pca_dims": {m: int(x.shape[1]) for m, x in split.test.items()},
               "n_labelled": int(split.y.size),
               "n_unlabelled": int(split.y_unlabelled.size), "n_test": int(split.y_test.size),
               "features": str(features), "trial": _plain(data.attrs.get("trial"))}
    _save_state(out / "model.pt", model_name, state)
    if live:
        _log(out / "dvclive", history, metrics)
    write_json(out / "metrics.json", metrics)
    return metrics


def _split(path: Path, model_name: str, data: FeatureSet, seed: int) -> Split:
    """Check the file for `model_name` (UserError naming it), then scale and project it."""
    if CLASSICAL[model_name].multimodal and len(data.modalities) != 2:
        raise UserError(f"{path}: model {model_name!r} co-trains one classifier per view and "
                        f"needs exactly two modalities; the file has {data.modalities}")
    train = ~data.is_test
    labelled, unlabelled = train & data.is_labeled, train & ~data.is_labeled
    if np.unique(data.label[labelled]).size < 2:
        raise UserError(f"{path}: model {model_name!r} needs labelled examples of at least "
                        f"two categories; the file has {np.unique(data.label[labelled]).size}")
    if not unlabelled.any() or not data.is_test.any():
        raise UserError(f"{path}: model {model_name!r} needs unlabelled and test rows; the file "
                        f"has {int(unlabelled.sum())} and {int(data.is_test.sum())}")
    from sklearn.decomposition import PCA

    scaled = {}
    for m, x in data.features.items():
        mean, std = x[train].mean(0), x[train].std(0)
        x = ((x - mean) / np.maximum(std, 1e-3)).astype(np.float32)
        pca = PCA(n_components=min(PCA_DIMS, *x[train].shape), random_state=seed)
        scaled[m] = pca.fit(x[train]).transform(x).astype(np.float32)
    pick = lambda rows: {m: x[rows] for m, x in scaled.items()}  # noqa: E731
    return Split(pick(labelled), data.label[labelled], pick(unlabelled), data.label[unlabelled],
                 pick(data.is_test), data.label[data.is_test], len(data.categories))


def _evaluate_cotrained(result: CoTrainResult, split: Split) -> dict[str, dict[str, float]]:
    """Each view's SVM alone, and both: the argmax of the summed margins.

    Summing one-vs-rest margins is the product of the views' softmax scores (the views are
    taken as independent given the category, co-training's own assumption); it needs no
    calibration, which 5 % labelled cannot give per fold in the demo's small data.
    """
    margins = {v: scores(clf, split.test[v], split.n_classes)
               for v, clf in result.classifiers.items()}
    unimodal = {v: _acc(s, split.y_test) for v, s in margins.items()}
    joint = {"+".join(margins): _acc(sum(margins.values()), split.y_test)}
    return {"unimodal": unimodal, "joint": joint}


def _label_spreading(split: Split) -> tuple[dict[str, dict[str, float]],
                                            dict[str, np.ndarray], dict[str, int]]:
    """LabelSpreading per modality and on their concatenation (key 'rgb+depth').

    Returns the accuracies, the labels spread to the training rows, and per input the test
    examples no label reached.
    """
    from sklearn.semi_supervised import LabelSpreading

    inputs = {m: (m,) for m in split.labelled}
    if len(inputs) > 1:
        inputs["+".join(split.labelled)] = tuple(split.labelled)
    y = np.concatenate([split.y, np.full(split.y_unlabelled.size, -1)])
    accuracy, transduced, unreached = {}, {}, {}
    for key, modalities in inputs.items():
        train = np.concatenate([np.concatenate([split.labelled[m], split.unlabelled[m]])
                                for m in modalities], axis=1)
        test = np.concatenate([split.test[m] for m in modalities], axis=1)
        model = LabelSpreading(kernel="knn", n_neighbors=min(SPREAD_NEIGHBOURS, len(train) - 1),
                               alpha=SPREAD_ALPHA, max_iter=1000)
        model.fit(train, y)
        with np.errstate(invalid="ignore", divide="ignore"):
            proba = model.predict_proba(test)
        # A test example whose neighbours no label reached has no distribution (0 / 0):
        # it is counted as wrong and reported, not given the first category silently.
        reached = np.isfinite(proba).all(1) & (proba.sum(1) > 0)
        pred = np.where(reached, model.classes_[np.nan_to_num(proba).argmax(1)], -1)
        accuracy[key] = float((pred == split.y_test).mean())
        unreached[key] = int((~reached).sum())
        transduced[key] = model.transduction_.astype(np.int64)
    return {"joint": accuracy}, transduced, unreached


def _acc(margins: np.ndarray, y: np.ndarray) -> float:
    return float((margins.argmax(1) == y).mean())


def _history(result: CoTrainResult, split: Split) -> list[dict[str, float]]:
    """Per round: how many examples each view handed over, and the share labelled right."""
    rounds: dict[int, dict[str, float]] = {}
    for h in result.handovers:
        step = rounds.setdefault(h.round, {})
        step[f"cotrain/handed/{h.source}"] = float(h.rows.size)
        if h.rows.size:
            right = float((split.y_unlabelled[h.rows] == h.labels).mean())
            step[f"cotrain/pseudo_label_accuracy/{h.source}"] = right
    return [rounds[r] for r in sorted(rounds)]


def _save_state(path: Path, model_name: str,
                state: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    import torch

    tensors = {f"{key}/{part}": torch.from_numpy(np.asarray(a, np.int64))
               for key, pair in state.items() for part, a in zip(("rows", "labels"), pair,
                                                                 strict=True)}
    torch_save({"format": FORMAT, "model": model_name, **tensors}, path)


def _log(folder: Path, history: list[dict[str, float]], metrics: dict[str, Any]) -> None:
    """DVCLive files the train stage declares: one step per round (one in all without)."""
    from pipeline.engine import Curves  # imported late: DVCLive pulls in much of DVC

    curves = Curves(folder, resume=False)
    for step, values in enumerate(history or [{"train/n_labelled": float(metrics["n_labelled"])}]):
        curves.log(step, values)
    curves.summary({f"test/accuracy/{key}": value for key, value in metrics["accuracy"].items()})
    curves.close()


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
