"""Co-training of one linear SVM per view: the loop and its two selection rules.

The SVMs are scikit-learn's `SGDClassifier(loss="hinge")` (a linear SVM, one-vs-rest, L2
penalty) run for a fixed number of epochs: liblinear's `LinearSVC` took 10 to 20 times as
long on 51 categories and did not always converge (bench/bench_cotrain.py, docs/models.md).

Each round, each view's SVM (fitted on its own training set: the labelled examples plus
what the other view handed it) scores the unlabelled pool and hands the examples it is most
confident about, *with its predicted labels*, to the other view only; they leave the pool.
This cross-handing is this project's rule, not Blum & Mitchell's (1998), whose two
classifiers both add to one shared labelled set drawn from a replenished pool U'. At most
`quota` examples per predicted category per view per round (so a dominant category cannot
flood the other view). The rules that pick them (this project's reading of the abstracts of
Cheng et al. 2015 and 2016, whose text and code were not at hand):

- `top`: the `quota` largest margins of the predicted category.
- `diverse`: the `candidates * quota` most confident are clustered into `quota` groups
  (k-means in that view's features) and the most confident of each group is taken, so a run
  of near-identical video frames adds one example, not `quota` copies of the same pose.

The SVMs after every round are kept (`CoTrainResult.snapshots`, [0] = labelled only), so a
caller can keep an earlier round (`pipeline/classical/validation.py` picks it on held-out
labelled rows). Only labelled and unlabelled rows reach this module: the caller never passes
test rows.
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

from pipeline.config import ClassicalConfig

RULES = ("top", "diverse")
_DEFAULTS = ClassicalConfig()


@dataclass(frozen=True)
class CoTrainSettings:
    rule: str = "top"  # "top" | "diverse"
    rounds: int = _DEFAULTS.rounds  # at most; fewer when the pool empties or nothing is picked
    quota: int = _DEFAULTS.quota  # per category, view and round; 0 = spread over `rounds`
    candidates: int = _DEFAULTS.candidates  # diverse: cluster the candidates * quota surest
    penalty: float = _DEFAULTS.penalty  # the SVMs' L2 penalty (SGDClassifier's alpha)
    epochs: int = _DEFAULTS.svm_epochs  # passes of SGD over each round's training set
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: ClassicalConfig, rule: str) -> CoTrainSettings:
        return cls(rule=rule, rounds=cfg.rounds, quota=cfg.quota, candidates=cfg.candidates,
                   penalty=cfg.penalty, epochs=cfg.svm_epochs, seed=cfg.seed)

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
    # [k]: each view's SVM fitted on its training set after k rounds; [0] = labelled only
    snapshots: list[dict[str, SGDClassifier]] = field(default_factory=list)
    handovers: list[Handover] = field(default_factory=list)
    rounds: int = 0  # rounds that handed something over
    # with validation rows: per snapshot, which of them each view and both got right
    validation: list[dict[str, np.ndarray]] = field(default_factory=list)

    @property
    def classifiers(self) -> dict[str, SGDClassifier]:
        return self.snapshots[-1]

    def training_set(self, view: str, upto: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """(unlabelled rows, labels) that joined `view`'s training set, in the order added,
        in rounds 1..`upto` (all of them by default)."""
        mine = [h for h in self.handovers
                if h.target == view and (upto is None or h.round <= upto)]
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


def predictions(classifiers: Mapping[str, SGDClassifier], x: Mapping[str, np.ndarray],
                n_classes: int) -> dict[str, np.ndarray]:
    """Each view's SVM alone, and both (key "a+b"): the argmax of the summed margins, i.e.
    the product of the views' softmax scores (the views taken as independent given the
    category, co-training's own assumption); it needs no calibration, which a few labelled
    examples per category cannot give."""
    margins = {v: scores(clf, x[v], n_classes) for v, clf in classifiers.items()}
    out = {v: m.argmax(1) for v, m in margins.items()}
    out["+".join(margins)] = sum(margins.values()).argmax(1)
    return out


def columns(classifiers: Mapping[str, SGDClassifier], x: Mapping[str, np.ndarray],
            y: np.ndarray, n_classes: int) -> dict[str, float]:
    """The accuracy of each of `predictions`."""
    return {k: float((p == y).mean()) for k, p in predictions(classifiers, x, n_classes).items()}


def cotrain(labelled: Mapping[str, np.ndarray], y: np.ndarray,
            unlabelled: Mapping[str, np.ndarray], n_classes: int, settings: CoTrainSettings,
            *, last_round: int | None = None,
            validation: tuple[Mapping[str, np.ndarray], np.ndarray] | None = None,
            progress: bool = False) -> CoTrainResult:
    """Co-train one SVM per view (exactly two views) from `labelled` (+ `y`) and `unlabelled`.

    Runs `settings.rounds` rounds, or `last_round` (<= rounds; the quota stays the one of
    `settings.rounds`). With `validation` (held-out labelled rows, never test rows) it scores
    every snapshot on them (`CoTrainResult.validation`: right or wrong, per row).
    """
    if settings.rule not in RULES:
        raise ValueError(f"rule: expected one of {', '.join(RULES)}, got {settings.rule!r}")
    views = list(labelled)
    if len(views) != 2 or set(unlabelled) != set(views):
        raise ValueError(f"co-training needs the same two views in both sets, got {views} "
                         f"and {list(unlabelled)}")
    n_u = len(unlabelled[views[0]])
    quota = settings.quota_for(n_u, n_classes)
    pool = np.ones(n_u, bool)
    result = CoTrainResult()

    def snapshot() -> None:
        result.snapshots.append({v: _fit(labelled[v], y, unlabelled[v],
                                         result.training_set(v), settings) for v in views})
        if validation is not None:
            x, y_held = validation
            result.validation.append({k: p == y_held for k, p in predictions(
                result.snapshots[-1], x, n_classes).items()})

    snapshot()
    last = settings.rounds if last_round is None else min(last_round, settings.rounds)
    bar = tqdm(range(1, last + 1), desc="co-training rounds", unit="round",
               disable=not progress)
    for r in bar:
        rows = np.flatnonzero(pool)
        if rows.size == 0:
            break
        picked = {v: _select(result.classifiers[v], unlabelled[v][rows], n_classes, quota,
                             settings, r) for v in views}
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
        snapshot()
    return result


def _fit(x_l: np.ndarray, y: np.ndarray, x_u: np.ndarray,
         added: tuple[np.ndarray, np.ndarray], settings: CoTrainSettings) -> SGDClassifier:
    rows, labels = added
    # tol=None: exactly `epochs` passes, the same work whatever the data (no early stop)
    clf = SGDClassifier(loss="hinge", alpha=settings.penalty, max_iter=settings.epochs,
                        tol=None, random_state=settings.seed)
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
