"""Co-training (Blum & Mitchell, 1998) with one linear SVM per view: the loop and its two rules.

The SVMs are scikit-learn's `SGDClassifier(loss="hinge")` (a linear SVM, one-vs-rest, L2
penalty) run for a fixed number of epochs: liblinear's `LinearSVC` took 10 to 20 times as
long on 51 categories and did not always converge (bench/bench_cotrain.py, docs/models.md).

Each round, each view's SVM is refitted on its own training set (the labelled examples plus
what the other view handed it), scores the unlabelled pool, and hands the examples it is
most confident about, *with its predicted labels*, to the other view; they leave the pool.
At most `quota` examples per predicted category per view per round (so a dominant category
cannot flood the other view). The rules that pick them:

- `top` (CT+SVM, Cheng et al. 2015): the `quota` largest margins of the predicted category.
- `diverse` (Cheng et al. 2016's diversity-preserving co-training, on fixed features): the
  `candidates * quota` most confident are clustered into `quota` groups (k-means in that
  view's features) and the most confident of each group is taken, so a run of near-identical
  video frames adds one example, not `quota` copies of the same object pose.

Neither paper's text was at hand here; the quota, the stopping rule and the joint score are
this project's choices (docs/models.md). Only labelled and unlabelled rows reach this module:
the caller never passes test rows.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier
from tqdm.auto import tqdm

RULES = ("top", "diverse")


@dataclass(frozen=True)
class CoTrainSettings:
    rule: str = "top"  # "top" | "diverse"
    rounds: int = 10  # at most; fewer when the pool empties or nothing is selected
    quota: int = 0  # per category, view and round; 0 = spread the pool over `rounds`
    candidates: int = 5  # diverse: cluster the candidates * quota most confident
    # the SVMs' L2 penalty (1 / (C n)); 1e-2 of {1e-4, 1e-3, 1e-2} on the two-view digits
    alpha: float = 1e-2
    epochs: int = 20  # passes of SGD over each round's training set
    seed: int = 0

    def quota_for(self, n_unlabelled: int, n_classes: int) -> int:
        """0 = the quota that would hand over the whole pool in `rounds` rounds."""
        if self.quota > 0:
            return self.quota
        return max(1, math.ceil(n_unlabelled / (2 * n_classes * self.rounds)))


@dataclass(frozen=True)
class Handover:
    """What one view's classifier gave the other in one round."""

    round: int  # 1-based
    source: str  # the view that labelled them
    target: str  # the view whose training set they joined
    rows: np.ndarray  # indices into the unlabelled examples, ascending
    labels: np.ndarray  # `source`'s predictions for them (never the true labels)


@dataclass
class CoTrainResult:
    classifiers: dict[str, SGDClassifier]  # fitted on each view's final training set
    handovers: list[Handover] = field(default_factory=list)
    rounds: int = 0  # rounds that handed something over

    def training_set(self, view: str) -> tuple[np.ndarray, np.ndarray]:
        """(unlabelled rows, labels) that joined `view`'s training set, in the order added."""
        mine = [h for h in self.handovers if h.target == view]
        if not mine:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return (np.concatenate([h.rows for h in mine]),
                np.concatenate([h.labels for h in mine]))


def scores(clf: SGDClassifier, x: np.ndarray, n_classes: int) -> np.ndarray:
    """[n, n_classes] one-vs-rest margins; -inf for a category the SVM never saw."""
    raw = clf.decision_function(x)
    out = np.full((len(x), n_classes), -np.inf)
    if raw.ndim == 1:  # two classes: one margin, positive for classes_[1]
        raw = np.stack([-raw, raw], axis=1)
    out[:, clf.classes_] = raw
    return out


def cotrain(labelled: Mapping[str, np.ndarray], y: np.ndarray,
            unlabelled: Mapping[str, np.ndarray], n_classes: int, settings: CoTrainSettings,
            *, progress: bool = False) -> CoTrainResult:
    """Co-train one SVM per view (exactly two views) from `labelled` (+ `y`) and `unlabelled`."""
    if settings.rule not in RULES:
        raise ValueError(f"rule: expected one of {', '.join(RULES)}, got {settings.rule!r}")
    views = list(labelled)
    if len(views) != 2 or set(unlabelled) != set(views):
        raise ValueError(f"co-training needs the same two views in both sets, got {views} "
                         f"and {list(unlabelled)}")
    n_u = len(unlabelled[views[0]])
    quota = settings.quota_for(n_u, n_classes)
    pool = np.ones(n_u, bool)
    result = CoTrainResult(classifiers={})
    bar = tqdm(range(1, settings.rounds + 1), desc="co-training rounds", unit="round",
               disable=not progress)
    for r in bar:
        rows = np.flatnonzero(pool)
        if rows.size == 0:
            break
        clfs = {v: _fit(labelled[v], y, unlabelled[v], result.training_set(v), settings)
                for v in views}
        picked = {v: _select(clfs[v], unlabelled[v][rows], n_classes, quota, settings, r)
                  for v in views}
        handed = 0
        for source, target in ((views[0], views[1]), (views[1], views[0])):
            local, labels = picked[source]
            result.handovers.append(Handover(r, source, target, rows[local], labels))
            pool[rows[local]] = False
            handed += local.size
        bar.set_postfix(handed=handed, pool=int(pool.sum()))
        if handed == 0:
            break
        result.rounds = r
    result.classifiers = {v: _fit(labelled[v], y, unlabelled[v], result.training_set(v),
                                  settings) for v in views}
    return result


def _fit(x_l: np.ndarray, y: np.ndarray, x_u: np.ndarray,
         added: tuple[np.ndarray, np.ndarray], settings: CoTrainSettings) -> SGDClassifier:
    rows, labels = added
    # tol=None: exactly `epochs` passes, the same work whatever the data (no early stop)
    clf = SGDClassifier(loss="hinge", alpha=settings.alpha, max_iter=settings.epochs, tol=None,
                        random_state=settings.seed)
    return clf.fit(np.concatenate([x_l, x_u[rows]]), np.concatenate([y, labels]))


def _select(clf: SGDClassifier, x: np.ndarray, n_classes: int, quota: int,
            settings: CoTrainSettings, round_: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions in `x`, predicted labels): at most `quota` per predicted category."""
    s = scores(clf, x, n_classes)
    pred = s.argmax(1)
    margin = s[np.arange(len(x)), pred]
    chosen: list[np.ndarray] = []
    for c in np.unique(pred):
        members = np.flatnonzero(pred == c)
        # most confident first; ties by position, so the order is reproducible
        ranked = members[np.lexsort((members, -margin[members]))]
        if settings.rule == "top" or ranked.size <= quota:
            chosen.append(ranked[:quota])
        else:
            chosen.append(_diverse(x, ranked[: settings.candidates * quota], margin, quota,
                                   settings.seed + round_))
    local = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    return local, pred[local]


def _diverse(x: np.ndarray, ranked: np.ndarray, margin: np.ndarray, quota: int,
             seed: int) -> np.ndarray:
    """The most confident member of each of `quota` k-means clusters of `ranked`."""
    with warnings.catch_warnings():
        # identical candidates leave fewer distinct clusters than asked: fewer are taken,
        # which is the point of the rule, not a failure
        warnings.simplefilter("ignore", ConvergenceWarning)
        cluster = KMeans(n_clusters=quota, n_init=1, random_state=seed).fit_predict(x[ranked])
    # `ranked` is in decreasing confidence, so each cluster's first member is its best
    _, first = np.unique(cluster, return_index=True)
    return ranked[first]
