"""Train one model on one features file and write its metrics (the `train` stage's work).

`DIR/metrics.json` (the form docs/architecture.md gives):
    {"model": "ss_hmvae", "accuracy": {"rgb": .., "depth": .., "rgb+depth": ..},
     "accuracy_iterative": {...}, "accuracy_by_method": {method: {key: acc}}, ...}
`accuracy` holds, for each input, the number Table 1 reports for the model.
Also in DIR: `checkpoint.pt` (resumable, `pipeline.engine`'s; deleted once metrics.json is
written), `config.json` (the effective parameters), `dvclive/` (per-epoch loss terms and the
learning curve's test accuracy, `curve_accuracy`) and, written last beside `metrics.json`,
`model.pt` (what `python -m pipeline predict` needs: `saved.py`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.atomic import plain, write_json
from pipeline.config import CLASSICAL_MODELS, VAE_MODELS, TrainConfig
from pipeline.devices import resolve_device
from pipeline.digest import file_sha256
from pipeline.distributed import SINGLE, World
from pipeline.engine import Checkpoint
from pipeline.errors import UserError
from pipeline.store import FeatureSet, read_features
from pipeline.vae import MODELS, Evaluation, ModelSpec, build_model
from pipeline.vae.data import TrialData, prepare
from pipeline.vae.evaluate import configured, evaluate, evaluate_options, table_row
from pipeline.vae.objective import Batch, labelled_share
from pipeline.vae.saved import save_trained
from pipeline.vae.training import fit

# The learning curve's test rows: a fixed random subset (docs/scale.md: its cost)
CURVE_ROWS = 1024


def train_and_evaluate(features: Path, model_name: str, cfg: TrainConfig, out: Path, *,
                       progress: bool = True, live: bool = True, world: World = SINGLE,
                       device: torch.device | None = None) -> dict[str, Any]:
    """Validate the inputs, train, evaluate every input mode, write `out/metrics.json`.

    Under torchrun every process trains its shards and evaluates (so each returns the
    metrics), and only the main one writes into `out`; `device` is then this process's.
    """
    spec = model_spec(model_name)
    data_file = _read(features, model_name, spec)  # every check happens before out/ exists
    device = device or resolve_device(cfg.device)
    data = prepare(data_file, cfg.likelihood, device)
    model = _build(model_name, data, cfg, device)
    evaluations = spec.evaluations(data.modalities)
    if world.is_main:
        _start(out, cfg)
    curve = _curve_rows(data.test, cfg.seed)

    def curve_accuracy() -> dict[str, float]:
        return {f"test/accuracy/{key}": value
                for key, value in _curve_accuracy(model, data, curve, evaluations, cfg).items()}

    checkpoint = Checkpoint(out / "checkpoint.pt", _fingerprint(features, model_name, cfg))
    history = fit(model, data, cfg, checkpoint=checkpoint,
                  curves=out / "dvclive" if live else None, evaluate=curve_accuracy,
                  progress=progress, world=world, desc=f"train {model_name}")
    metrics = _metrics(model, data, data_file, features, model_name, cfg, evaluations, history)
    if world.is_main:
        save_trained(out / "model.pt", model=model, name=model_name, cfg=cfg, data=data,
                     features=features, attrs=data_file.attrs)
        write_json(out / "metrics.json", metrics)
        # The run is complete: its resume state (weights + Adam) is not kept (nor cached).
        (out / "checkpoint.pt").unlink(missing_ok=True)
    return metrics


def model_spec(model_name: str) -> ModelSpec:
    """The registry entry of `model_name`, or a UserError naming every model."""
    if model_name in CLASSICAL_MODELS:
        raise UserError(f"--model: {model_name!r} is a classical model: it has its own stage, "
                        "`python -m pipeline classical`")
    if model_name not in MODELS:
        raise UserError(f"--model: unknown model {model_name!r}; expected one of "
                        f"{', '.join(VAE_MODELS)} (or, with `python -m pipeline classical`, "
                        f"{', '.join(CLASSICAL_MODELS)})")
    return MODELS[model_name]


def _read(features: Path, model_name: str, spec: ModelSpec) -> FeatureSet:
    """The features file, checked for this model (raises UserError before anything is written)."""
    data_file = read_features(features)
    if spec.multimodal and len(data_file.modalities) < 2:
        raise UserError(f"{features}: model {model_name!r} needs two modalities, the file has "
                        f"{data_file.modalities}")
    return data_file


def _build(model_name: str, data: TrialData, cfg: TrainConfig,
           device: torch.device) -> nn.Module:
    torch.manual_seed(cfg.seed)  # the initial weights are part of what the seed fixes
    return build_model(model_name, data.dims, len(data.categories), cfg,
                       labelled_share=labelled_share(len(data.labelled),
                                                      len(data.unlabelled))).to(device)


def _fingerprint(features: Path, model_name: str, cfg: TrainConfig) -> dict[str, Any]:
    return {"model": model_name, "features": file_sha256(features),
            "config": json.dumps(dataclasses.asdict(cfg), sort_keys=True)}


def _start(out: Path, cfg: TrainConfig) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", dataclasses.asdict(cfg))


def _curve_rows(test: Batch, seed: int) -> Batch:
    """At most `CURVE_ROWS` test rows, the same every epoch (drawn from their own generator,
    never from the training's)."""
    if len(test) <= CURVE_ROWS:
        return test
    rows = torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(len(test))
                                    [:CURVE_ROWS])).to(test.y.device)
    return Batch({m: t.index_select(0, rows) for m, t in test.x.items()},
                 test.y.index_select(0, rows))


def _curve_accuracy(model: nn.Module, data: TrialData, rows: Batch,
                    evaluations: list[Evaluation], cfg: TrainConfig) -> dict[str, float]:
    """The learning curve's test accuracy: Table 1's evaluations but iterative sampling,
    with the posterior-mean shortcut, on the fixed rows (a few % of an epoch: docs/scale.md)."""
    cheap = [e for e in evaluations if e.method != "iterative"]
    shortcut = dataclasses.replace(cfg, prediction="posterior_mean")
    return table_row(evaluate(model, rows, cheap, data.scaler, shortcut), cheap)


def _metrics(model: nn.Module, data: TrialData, data_file: FeatureSet, features: Path,
             model_name: str, cfg: TrainConfig, evaluations: list[Evaluation],
             history: list[dict[str, float]]) -> dict[str, Any]:
    """The final evaluation of a trained model: what `metrics.json` holds."""
    by_option = evaluate_options(model, data.test, evaluations, data.scaler, cfg)
    results: dict[str, dict[str, float]] = {}
    for e in evaluations:  # the configured options: Table 1's numbers
        results.setdefault(e.method, {})[e.key] = by_option[e.method][
            configured(model, e, cfg)[0]][e.key]
    metrics: dict[str, Any] = {"model": model_name, "accuracy": table_row(results, evaluations)}
    if "iterative" in results:
        # Table 1's iterative-sampling row: joint input needs no sampling.
        metrics["accuracy_iterative"] = results["iterative"] | results["joint"]
    metrics |= {
        "accuracy_by_method": results,
        "accuracy_by_option": by_option,
        "epochs": len(history),
        "final_loss": history[-1]["loss"] if history else None,
        "n_labelled": len(data.labelled), "n_unlabelled": len(data.unlabelled),
        "n_test": len(data.test), "features": str(features),
        "trial": plain(data_file.attrs.get("trial")),
    }
    return metrics
