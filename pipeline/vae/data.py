"""From a features file to tensors: scaling, the labelled / unlabelled / test sets."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.config import LIKELIHOODS
from pipeline.store import FeatureSet
from pipeline.vae.objective import Batch

GAUSSIAN = ("gaussian", "gaussian_fixed")  # learned or unit variance: both standardised


def typical_scale(spread: np.ndarray) -> float:
    """The median spread over the dimensions that vary (1 if none does)."""
    varying = spread[spread > 0]
    return float(np.median(varying)) if varying.size else 1.0


@dataclass(frozen=True)
class FeatureScaler:
    """Per-dimension affine map fitted on training rows only (test rows stay unseen).

    Gaussian likelihoods: standardise (mean 0, std 1). Bernoulli: divide by the maximum,
    so fc1 features (>= 0, sparse) land in [0, 1] and can be scored as Bernoulli means.

    A dimension that is constant on the training rows (labelled and unlabelled; its maximum
    equals its minimum exactly, no tolerance) carries nothing the model could learn from: it
    is fixed at that training value for every row it transforms (training, test, `predict`),
    whatever the likelihood, and `constant` / `constant_value` record which dimensions and
    their values (saved in `model.pt`). Fine-tuned fc1 layers have units that are dead on
    every training image and fire on a held-out one; left free, such a value floods the
    first layer at test time, however it is scaled.

    A dimension that varies, however little, keeps its values, and its divisor is floored at
    the modality's typical one (the median over the dimensions that vary), so that a unit
    firing on a few training rows is not amplified either.
    """

    kind: str
    offset: dict[str, np.ndarray]
    scale: dict[str, np.ndarray]
    # modality -> indices of the dimensions constant on the training rows, and their values
    # (a model saved before this rule has none: it was trained and evaluated without it)
    constant: dict[str, np.ndarray] = field(default_factory=dict)
    constant_value: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def fit(cls, features: dict[str, np.ndarray], rows: np.ndarray, kind: str) -> FeatureScaler:
        offset, scale, constant, constant_value = {}, {}, {}, {}
        for m, x in features.items():
            train = x[rows]
            if kind in GAUSSIAN:
                offset[m] = train.mean(0)
                spread = train.std(0)
            elif kind == "bernoulli":
                if (train < 0).any():
                    raise ValueError(f"bernoulli likelihood needs features >= 0; {m!r} has "
                                     "negative values (use a gaussian likelihood)")
                offset[m] = np.zeros(x.shape[1], np.float32)
                spread = train.max(0)
            else:
                raise ValueError(f"likelihood: expected one of {', '.join(LIKELIHOODS)}, "
                                 f"got {kind!r}")
            constant[m] = np.flatnonzero(train.max(0) == train.min(0))
            constant_value[m] = train[0, constant[m]].astype(np.float32)
            spread[constant[m]] = 0  # the mean of equal values can round to a spread > 0
            scale[m] = np.maximum(spread, typical_scale(spread)).astype(np.float32)
        return cls(kind, offset, scale, constant, constant_value)

    def transform(self, m: str, x: np.ndarray) -> np.ndarray:
        if m in self.constant and self.constant[m].size:
            x = x.copy()
            x[:, self.constant[m]] = self.constant_value[m]
        out = (x - self.offset[m]) / self.scale[m]
        if self.kind == "bernoulli":
            out = np.clip(out, 0.0, 1.0)
        return out.astype(np.float32)

    def state(self) -> dict:
        return {"kind": self.kind, "offset": self.offset, "scale": self.scale,
                "constant": self.constant, "constant_value": self.constant_value}

    @classmethod
    def from_state(cls, state: dict) -> FeatureScaler:
        """The inverse of `state()` (a saved model's scaling, `pipeline/vae/saved.py`)."""
        return cls(**state)


@dataclass(frozen=True)
class TrialData:
    labelled: Batch
    unlabelled: Batch
    test: Batch
    scaler: FeatureScaler
    categories: list[str]
    modalities: list[str]

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(x.shape[1]) for m, x in self.test.x.items()}


def prepare(data: FeatureSet, likelihood: str, device: torch.device) -> TrialData:
    """Split a features file into labelled, unlabelled (the other training rows) and test."""
    train = ~data.is_test
    scaler = FeatureScaler.fit(data.features, train, likelihood)

    def batch(rows: np.ndarray, labelled: bool) -> Batch:
        x = {m: torch.from_numpy(scaler.transform(m, f[rows])).to(device)
             for m, f in data.features.items()}
        y = torch.from_numpy(data.label[rows]).to(device) if labelled else None
        return Batch(x, y)

    return TrialData(
        labelled=batch(data.is_labeled, True),
        unlabelled=batch(train & ~data.is_labeled, False),
        test=batch(data.is_test, True),
        scaler=scaler,
        categories=list(data.categories),
        modalities=data.modalities,
    )
