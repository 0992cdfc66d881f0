"""A trained model as `predict` needs it: `DIR/model.pt`, written by `train` when it ends.

One file holds everything needed to classify new features the way `metrics.json` was
computed: the weights, the feature scaling fitted on the training rows (with the dimensions
constant on them and their values, which every row takes: `data.FeatureScaler`; a file
written before that record loads with none, as it was evaluated), the effective train
configuration (architecture, precision, iterative steps, seed), the categories and
modalities, the model name, and the provenance of the features (the features file's
attributes: trial, image size, the fine-tuned VGG16 checkpoints' sha256; and the
`trial-K.config.json` beside it, which holds the preprocessing size).

`load_trained` checks the format and rebuilds the model with today's code; a file of another
format, or weights that no longer fit the code's model, is a `SavedModelError` naming the file.

Model kinds: a file names its `kind`, and `KINDS` maps a kind to its loader returning an object
with the `Classifier` interface below. The classical models (co-training, label spreading)
are refused with one line: their `model.pt` holds the rows each learnt from, not a fitted
classifier, and label spreading labels only the rows of the graph it was built on.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from pipeline.atomic import plain, torch_save
from pipeline.config import CLASSICAL_MODELS, TrainConfig
from pipeline.errors import UserError
from pipeline.vae import MODELS, Evaluation, build_model
from pipeline.vae.data import FeatureScaler, TrialData
from pipeline.vae.evaluate import EVAL_BATCH, predict
from pipeline.vae.objective import labelled_share

FORMAT = "ssmvae-model/1"
TORCH_KIND = "torch"
# For a set of given inputs, the method `predict` uses unless told otherwise: the model's own
# classifier for those inputs first, then the unimodal encoder (SS-HMVAE-kl), iterative
# sampling (SS-HMVAE), and zero-fill last (SS-MVAE has nothing else).
PREFERENCE = ("joint", "unimodal", "iterative", "zero_fill")
# the classical models' names (pipeline/classical, not imported: the train stages that save
# a model would then depend on it)
CLASSICAL = CLASSICAL_MODELS


class SavedModelError(UserError):
    """A model folder's `model.pt` is missing, unreadable or from other code."""


class Classifier(Protocol):
    """What `predict` needs of a loaded model, whatever its kind."""

    name: str
    categories: list[str]
    modalities: list[str]
    provenance: dict[str, Any]

    def evaluations(self) -> list[Evaluation]: ...

    def classify(self, x: Mapping[str, np.ndarray], evaluation: Evaluation
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(predicted class [N], class probabilities [N, K]) of raw fc1 features; a row's
        result depends on that row alone, however the rows are batched."""
        ...


Loader = Callable[[dict[str, Any], Path, torch.device], Classifier]
KINDS: dict[str, Loader] = {}


def register(kind: str) -> Callable[[Loader], Loader]:
    def add(loader: Loader) -> Loader:
        KINDS[kind] = loader
        return loader
    return add


def choose(classifier: Classifier, inputs: tuple[str, ...],
           method: str | None = None) -> Evaluation:
    """The evaluation `predict` uses for these inputs (`method` None: by `PREFERENCE`)."""
    unknown = [m for m in inputs if m not in classifier.modalities]
    if unknown:
        raise UserError(f"model {classifier.name!r} was trained on {classifier.modalities}; "
                        f"it cannot take {unknown}")
    given = set(inputs)
    options = {e.method: e for e in classifier.evaluations() if set(e.inputs) == given}
    if not options:
        alone = sorted({e.key for e in classifier.evaluations()})
        raise UserError(f"model {classifier.name!r} cannot classify {'+'.join(inputs)}; "
                        f"it takes {', '.join(alone)} (give only those inputs)")
    if method is None:
        method = next(m for m in PREFERENCE if m in options)
    if method not in options:
        raise UserError(f"--method {method}: model {classifier.name!r} offers "
                        f"{', '.join(options)} for {'+'.join(inputs)}")
    return options[method]


# --------------------------------------------------------------------------- saving


def save_trained(path: Path, *, model: nn.Module, name: str, cfg: TrainConfig,
                 data: TrialData, features: Path, attrs: Mapping[str, Any]) -> None:
    """Write `path` (`DIR/model.pt`) atomically: a killed run never leaves half a file."""
    state = {
        "format": FORMAT, "kind": TORCH_KIND, "model": name,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "dims": dict(data.dims), "config": dataclasses.asdict(cfg),
        # eq. (4)'s weights, as experiment._build gave them (the loss only; kept so that the
        # rebuilt model is the trained one)
        "labelled_share": labelled_share(len(data.labelled), len(data.unlabelled)),
        "scaler": _tensors(data.scaler.state()),
        "categories": list(data.categories), "modalities": list(data.modalities),
        "provenance": features_provenance(features, attrs),
    }
    torch_save(state, path)


def features_provenance(features: Path, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The features file's path, attributes and (if present) `<stem>.config.json`."""
    config_file = features.with_name(f"{features.stem}.config.json")
    config = json.loads(config_file.read_text()) if config_file.is_file() else None
    return {"features": str(features), "attrs": plain(dict(attrs)), "config": config}


def _tensors(value: Any) -> Any:
    """numpy arrays -> tensors, so that `torch.load(weights_only=True)` reads them back."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, dict):
        return {k: _tensors(v) for k, v in value.items()}
    return value


def _arrays(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {k: _arrays(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- loading


def load_trained(folder: str | Path, device: torch.device | None = None) -> Classifier:
    """The classifier saved in `folder/model.pt`, checked (`SavedModelError` names the file)."""
    path = Path(folder) / "model.pt"
    if not path.is_file():
        raise SavedModelError(f"{path}: not found; train this model with the current code "
                              "(`dvc repro` or `python -m pipeline train`) first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a file that is not ours
        raise SavedModelError(f"{path}: not a model file of the train stage ({err})") from err
    if isinstance(state, dict) and state.get("model") in CLASSICAL:
        raise SavedModelError(
            f"{path}: {state['model']} is a classical model, which predict does not support: "
            "its model.pt holds the rows it learnt from, not a classifier for new frames "
            f"(predict takes {', '.join(MODELS)})")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise SavedModelError(f"{path}: format {found!r}, expected {FORMAT!r}; it was written "
                              "by other code: train the model again")
    kind = state.get("kind")
    if kind not in KINDS:
        raise SavedModelError(f"{path}: model kind {kind!r} is unknown to this code "
                              f"(known: {', '.join(KINDS)})")
    return KINDS[kind](state, path, device or torch.device("cpu"))


@dataclasses.dataclass
class TorchClassifier:
    """A generative model (or the MLP) of `pipeline.vae`, classifying through
    `evaluate.predict`, the function that computed `metrics.json`."""

    name: str
    model: nn.Module
    scaler: FeatureScaler
    cfg: TrainConfig
    categories: list[str]
    modalities: list[str]
    provenance: dict[str, Any]
    dims: dict[str, int]
    device: torch.device

    def evaluations(self) -> list[Evaluation]:
        return MODELS[self.name].evaluations(self.modalities)

    def classify(self, x: Mapping[str, np.ndarray], evaluation: Evaluation
                 ) -> tuple[np.ndarray, np.ndarray]:
        """With the configured option (Table 1's number) and `evaluate`'s common random
        numbers, so that the rows of a test set give the predictions behind `metrics.json`."""
        n = len(next(iter(x.values())))
        preds, probs = [], []
        for lo in range(0, n, EVAL_BATCH):
            block = self._tensors({m: v[lo:lo + EVAL_BATCH] for m, v in x.items()})
            log_probs = predict(self.model, block, evaluation, self.scaler, self.cfg)
            preds.append(log_probs.argmax(-1).cpu().numpy())
            probs.append(log_probs.float().exp().cpu().numpy())
        return np.concatenate(preds), np.concatenate(probs)

    def _tensors(self, x: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Every modality, scaled; one not given is NaN (evaluate.predict replaces it by
        zero-fill or sampling, or does not read it; NaN makes any other use visible)."""
        n = len(next(iter(x.values())))
        out = {}
        for m in self.modalities:
            if m in x:
                out[m] = torch.from_numpy(self.scaler.transform(m, x[m]))
            else:
                out[m] = torch.full((n, self.dims[m]), float("nan"))
        return {m: t.to(self.device) for m, t in out.items()}


@register(TORCH_KIND)
def _load_torch(state: dict[str, Any], path: Path, device: torch.device) -> TorchClassifier:
    name = state.get("model")
    if name not in MODELS:
        raise SavedModelError(f"{path}: model {name!r} is unknown to this code (predict "
                              f"takes {', '.join(MODELS)}; not the classical "
                              f"{', '.join(CLASSICAL)})")
    try:
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        config = {k: v for k, v in state["config"].items() if k in fields}
        config["models"] = tuple(config.get("models", ()))
        cfg = TrainConfig(**config)
        scaler = FeatureScaler.from_state(_arrays(state["scaler"]))
        model = build_model(name, state["dims"], len(state["categories"]), cfg,
                            labelled_share=state["labelled_share"])
        model.load_state_dict(state["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise SavedModelError(f"{path}: does not fit this code's {name!r} model ({err}); it "
                              "was written by other code: train the model again") from err
    return TorchClassifier(name=name, model=model.to(device).eval(), scaler=scaler, cfg=cfg,
                           categories=list(state["categories"]),
                           modalities=list(state["modalities"]),
                           provenance=state.get("provenance") or {},
                           dims=dict(state["dims"]), device=device)
