"""The classical models' work: fit, evaluate, write DIR's files.

Writes what the generative models write, so DVC's outputs and the report are the same:
`metrics.json` (`accuracy` keyed rgb / depth / rgb+depth, `accuracy_by_method`; for the
co-training models also `accuracy_start`, the labelled-only SVMs co-training starts from, and
`rounds_kept`, the round each column keeps), `config.json`, `dvclive/` (per round: examples
handed over and how many of their labels were right, judged on the training rows' labels,
never the test rows', and the held-out labelled rows' accuracy), and `model.pt` (format
`ssmvae-classical/1`: the training sets kept, i.e. which unlabelled rows each view learnt
from and with which labels; `predict` does not load it). Each view's features are
standardised and projected on their first `classical.pca_dims` principal components, both
fitted on the training rows (labelled and unlabelled, never test): the SVMs, k-means and the
kNN graph then work in 256 dimensions, not 4096, which is what makes the paper's scale take
minutes on a CPU.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import plain, torch_save, write_json
from pipeline.classical import CLASSICAL
from pipeline.classical.cotrain import CoTrainResult, CoTrainSettings, columns, cotrain
from pipeline.classical.validation import RoundChoice, choose_rounds
from pipeline.config import ClassicalConfig
from pipeline.errors import UserError
from pipeline.store import FeatureSet, read_features

FORMAT = "ssmvae-classical/1"  # model.pt of a classical model (predict does not load it)

RULES = {"ct_svm": "top", "cotraining": "diverse"}  # the co-training models' rules


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


def train_and_evaluate_classical(features: Path, model_name: str, cfg: ClassicalConfig,
                                 out: Path, *, progress: bool = True, live: bool = True
                                 ) -> dict[str, Any]:
    """Check the file, fit `model_name`, evaluate every input, write `out/metrics.json`."""
    if model_name not in CLASSICAL:
        raise UserError(f"--model: {model_name!r} is not one of {', '.join(CLASSICAL)}")
    data = read_features(features)
    split = _split(features, model_name, data, cfg)  # all checks before out/ exists
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", dataclasses.asdict(cfg))
    if model_name in RULES:
        by_method, extra, state, history = _cotrain(split, cfg, RULES[model_name], progress)
    else:
        by_method, transduced, unreached = _label_spreading(split, cfg)
        extra = {"n_neighbors": cfg.spread_neighbours, "alpha": cfg.spread_alpha,
                 "test_unreached": unreached}
        state = {k: (np.arange(v.size), v) for k, v in transduced.items()}
        history = []
    accuracy = {k: v for method in by_method.values() for k, v in method.items()}
    metrics = {"model": model_name, "accuracy": accuracy, "accuracy_by_method": by_method,
               **extra, "pca_dims": {m: int(x.shape[1]) for m, x in split.test.items()},
               "n_labelled": int(split.y.size),
               "n_unlabelled": int(split.y_unlabelled.size), "n_test": int(split.y_test.size),
               "features": str(features), "trial": plain(data.attrs.get("trial"))}
    _save_state(out / "model.pt", model_name, state)
    if live:
        _log(out / "dvclive", history, metrics)
    write_json(out / "metrics.json", metrics)
    return metrics


def _cotrain(split: Split, cfg: ClassicalConfig, rule: str, progress: bool
             ) -> tuple[dict[str, dict[str, float]], dict[str, Any],
                        dict[str, tuple[np.ndarray, np.ndarray]], list[dict[str, float]]]:
    """Pick each column's round on held-out labelled rows, co-train on all labelled rows up to
    the latest, read each column from its round; also the start (round 0) and the diagnostics.
    """
    settings = CoTrainSettings.from_config(cfg, rule)
    choice = choose_rounds(split.labelled, split.y, split.unlabelled, split.n_classes,
                           settings, cfg.validation_folds)
    result = cotrain(split.labelled, split.y, split.unlabelled, split.n_classes, settings,
                     last_round=max(choice.rounds.values()), progress=progress)
    # a column keeps the last round run if the pool ran out before its round
    kept = {col: min(k, len(result.snapshots) - 1) for col, k in choice.rounds.items()}
    views = list(split.labelled)
    extra = {
        # the labelled-only SVMs (same features, PCA and penalty): round 0 of the same run
        "accuracy_start": columns(result.snapshots[0], split.test, split.y_test,
                                  split.n_classes),
        "rounds": result.rounds, "rounds_kept": kept, "validation_accuracy": choice.curve,
        "settings": dataclasses.asdict(settings),
        "n_handed": {v: int(result.training_set(v, kept[v])[0].size) for v in views}}
    state = {v: result.training_set(v, kept[v]) for v in views}
    return (_evaluate_cotrained(result, kept, split), extra, state,
            _history(result, choice, split))


def _split(path: Path, model_name: str, data: FeatureSet, cfg: ClassicalConfig) -> Split:
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
        pca = PCA(n_components=min(cfg.pca_dims, *x[train].shape), random_state=cfg.seed)
        scaled[m] = pca.fit(x[train]).transform(x).astype(np.float32)
    pick = lambda rows: {m: x[rows] for m, x in scaled.items()}  # noqa: E731
    return Split(pick(labelled), data.label[labelled], pick(unlabelled), data.label[unlabelled],
                 pick(data.is_test), data.label[data.is_test], len(data.categories))


def _evaluate_cotrained(result: CoTrainResult, kept: dict[str, int], split: Split
                        ) -> dict[str, dict[str, float]]:
    """Each view's SVM alone, and both (`cotrain.columns`), each from the round it keeps."""
    views = list(split.labelled)
    both = "+".join(views)
    at = {k: columns(result.snapshots[k], split.test, split.y_test, split.n_classes)
          for k in set(kept.values())}
    return {"unimodal": {v: at[kept[v]][v] for v in views},
            "joint": {both: at[kept[both]][both]}}


def _label_spreading(split: Split, cfg: ClassicalConfig) -> tuple[dict[str, dict[str, float]],
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
        model = LabelSpreading(kernel="knn",
                               n_neighbors=min(cfg.spread_neighbours, len(train) - 1),
                               alpha=cfg.spread_alpha, max_iter=1000)
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


def _history(result: CoTrainResult, choice: RoundChoice, split: Split
             ) -> list[dict[str, float]]:
    """Per round: how many examples each view handed over, the share labelled right, and the
    held-out labelled rows' mean accuracy (the curve that picked the round kept)."""
    rounds: dict[int, dict[str, float]] = {}
    for h in result.handovers:
        step = rounds.setdefault(h.round, {})
        step[f"cotrain/handed/{h.source}"] = float(h.rows.size)
        if h.rows.size:
            right = float((split.y_unlabelled[h.rows] == h.labels).mean())
            step[f"cotrain/pseudo_label_accuracy/{h.source}"] = right
    for r, accuracy in enumerate(choice.curve[1:], start=1):
        step = rounds.setdefault(r, {})
        step.update({f"cotrain/validation_accuracy/{k}": v for k, v in accuracy.items()})
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
