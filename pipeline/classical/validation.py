"""Which co-training round to keep, chosen on labelled rows held out in turn (never test rows).

Co-training that hands over wrong labels faster than it learns ends below the labelled-only
SVM it starts from. So the labelled rows are dealt into `folds` folds (each category spread
over the folds, so a category with two or more examples keeps one in every fold's training
part); for each fold, co-training runs on the other folds' labelled rows and the whole
unlabelled pool, and every round's SVMs classify the held-out fold. Every round is run: the
accuracy often dips for a few rounds before it climbs, so stopping at the first dip keeps
too little. Pooled over the folds (up to the round every fold reached), each labelled row is
then right or wrong at each round, per column (each view alone, both).

Each column keeps round 0, the labelled-only SVM, unless a later round beats it clearly: on
the held-out rows, it must fix more of round 0's errors than it breaks by more than one
standard deviation of that difference (b - c > sqrt(b + c), McNemar's paired count: with
a few dozen labelled rows a gain of one or two rows is noise). Among the rounds that do,
the most accurate is kept (ties: the earlier).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pipeline.classical.cotrain import CoTrainSettings, cotrain


@dataclass(frozen=True)
class RoundChoice:
    rounds: dict[str, int]  # per column (view, view, "a+b"): the round kept, 0 = start
    curve: list[dict[str, float]]  # per round: the held-out accuracy of each column


def deal_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold number per labelled row: each category's rows shuffled and dealt in turn."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(y), np.int64)
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        fold[rows] = (np.arange(rows.size) + rng.integers(folds)) % folds
    return fold


def choose_rounds(labelled: Mapping[str, np.ndarray], y: np.ndarray,
                  unlabelled: Mapping[str, np.ndarray], n_classes: int,
                  settings: CoTrainSettings, folds: int) -> RoundChoice:
    """The round to keep per column, from `folds` co-training runs on held-out labelled rows."""
    fold = deal_folds(y, folds, settings.seed)
    runs = []
    for k in range(folds):
        keep, held = fold != k, fold == k
        if not held.any() or np.unique(y[keep]).size < 2:
            continue  # too few labelled rows for this fold: the others decide
        runs.append(cotrain({v: x[keep] for v, x in labelled.items()}, y[keep], unlabelled,
                            n_classes, settings,
                            validation=({v: x[held] for v, x in labelled.items()}, y[held]))
                    .validation)
    names = [*labelled, "+".join(labelled)]
    if not runs:  # nothing to validate on: keep the labelled-only SVMs
        return RoundChoice({c: 0 for c in names}, [])
    reached = min(len(run) for run in runs)
    # right[col]: [rounds, held-out rows], every labelled row once
    right = {c: np.stack([np.concatenate([run[r][c] for run in runs])
                          for r in range(reached)]) for c in names}
    curve = [{c: float(right[c][r].mean()) for c in names} for r in range(reached)]
    return RoundChoice({c: keep_round(right[c]) for c in names}, curve)


def keep_round(right: np.ndarray) -> int:
    """[rounds, rows] right/wrong -> the round kept: 0 unless a later one beats it clearly."""
    fixed = (right & ~right[0]).sum(1)  # b: round 0's errors this round gets right
    broken = (~right & right[0]).sum(1)  # c: round 0's successes this round gets wrong
    clear = fixed - broken > np.sqrt(fixed + broken)
    clear[0] = True
    accuracy = np.where(clear, right.mean(1), -1.0)
    return int(np.argmax(accuracy))  # the first of equal values: the earlier round
