"""Train one model on one features file and write its metrics (the `train` stage's work).

`DIR/metrics.json` (the form DESIGN.md gives):
    {"model": "ss_hmvae", "accuracy": {"rgb": .., "depth": .., "rgb+depth": ..},
     "accuracy_iterative": {...}, "accuracy_by_method": {method: {key: acc}}, ...}
`accuracy` holds, for each input, the number Table 1 reports for the model.
Also in DIR: `checkpoint.pt` (resumable, per epoch; a single run deletes it once metrics.json
is written), `config.json` (the effective parameters), `dvclive/` (per-epoch loss terms
and test accuracy) and, written last beside `metrics.json`, `model.pt` (what
`python -m pipeline predict` needs: `saved.py`).
`train_and_evaluate_stacked` does the same for several features files at once (one model
trained per file, all in one vmapped loop: `stacked.py`), writing the same files per DIR.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.atomic import write_json
from pipeline.config import MODEL_NAMES, TrainConfig
from pipeline.devices import resolve_device
from pipeline.distributed import SINGLE, World
from pipeline.errors import UserError
from pipeline.store import FeatureSet, read_features
from pipeline.vae import MODELS, Evaluation, ModelSpec, build_model
from pipeline.vae.data import TrialData, prepare
from pipeline.vae.evaluate import configured, evaluate, evaluate_options, table_row
from pipeline.vae.saved import save_trained
from pipeline.vae.stacked import fit_stacked
from pipeline.vae.training import FitSettings, fit


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def train_and_evaluate(features: Path, model_name: str, cfg: TrainConfig, out: Path, *,
                       progress: bool = True, live: bool = True, world: World = SINGLE,
                       device: torch.device | None = None) -> dict[str, Any]:
    """Validate the inputs, train, evaluate every input mode, write `out/metrics.json`.

    Under torchrun every process trains its shards and evaluates (so each returns the
    metrics), and only the main one writes into `out`; `device` is then this process's.
    """
    spec = _spec(model_name)
    data_file = _read(features, model_name, spec)  # every check happens before out/ exists
    device = device or resolve_device(cfg.device)
    data = prepare(data_file, cfg.likelihood, device)
    model = _build(model_name, data, cfg, device)
    evaluations = spec.evaluations(data.modalities)
    if world.is_main:
        _start(out, cfg)
    logger = (_Live(out / "dvclive", resume=(out / "checkpoint.pt").is_file())
              if live and world.is_main else None)

    def on_epoch(epoch: int, means: dict[str, float]) -> None:
        if logger is not None:
            logger.log(epoch, means, _cheap_accuracy(model, data, evaluations, cfg))

    history = fit(model, data, _settings(cfg, device), checkpoint=out / "checkpoint.pt",
                  fingerprint=_fingerprint(features, model_name, cfg), on_epoch=on_epoch,
                  progress=progress, world=world)
    metrics = _metrics(model, data, data_file, features, model_name, cfg, evaluations, history)
    if world.is_main:
        save_trained(out / "model.pt", model=model, name=model_name, cfg=cfg, data=data,
                     features=features, attrs=data_file.attrs)
        write_json(out / "metrics.json", metrics)
        # The run is complete: its resume state (weights + Adam) is not kept (nor cached).
        (out / "checkpoint.pt").unlink(missing_ok=True)
    if logger is not None:
        logger.close()
    return metrics


def train_and_evaluate_stacked(features: list[Path], model_name: str, cfg: TrainConfig,
                               outs: list[Path], *, progress: bool = True,
                               live: bool = True) -> list[dict[str, Any]]:
    """`train_and_evaluate` for several features files (trials) at once, with `fit_stacked`.

    Writes each `outs[i]` as a single run on `features[i]` would (`metrics.json`, with
    `"stacked": N` added, `config.json`, `dvclive/`, and a finished `checkpoint.pt`), the
    runs' noise aside. All files are checked before any folder is written. Stacked runs do
    not resume: an interrupted call trains every run afresh.
    """
    if len(features) != len(outs) or not features:
        raise UserError(f"--features and --out: got {len(features)} features file(s) and "
                        f"{len(outs)} output folder(s); give one --out per --features")
    if len({out.resolve() for out in outs}) != len(outs):
        raise UserError(f"--out: the output folders must differ, got {[str(o) for o in outs]}")
    spec = _spec(model_name)
    files = [_read(path, model_name, spec) for path in features]
    shape = _shape(files[0])
    for path, data_file in zip(features[1:], files[1:], strict=True):
        if _shape(data_file) != shape:
            raise UserError(f"{path}: stacked runs need one model shape; its modalities, "
                            f"dimensions and classes {_shape(data_file)} differ from "
                            f"{features[0]}'s {shape}")
    device = resolve_device(cfg.device)
    datas = [prepare(data_file, cfg.likelihood, device) for data_file in files]
    models = [_build(model_name, data, cfg, device) for data in datas]
    evaluations = spec.evaluations(datas[0].modalities)
    for out in outs:
        _start(out, cfg)
    loggers = [_Live(out / "dvclive", resume=False) for out in outs] if live else []

    def on_epoch(run: int, epoch: int, means: dict[str, float]) -> None:
        if loggers:
            loggers[run].log(epoch, means,
                             _cheap_accuracy(models[run], datas[run], evaluations, cfg))

    histories = fit_stacked(
        models, datas, _settings(cfg, device), progress=progress, names=[str(f) for f in features],
        on_epoch=on_epoch, checkpoints=[out / "checkpoint.pt" for out in outs],
        fingerprints=[_fingerprint(f, model_name, cfg) for f in features])
    results = []
    for i, out in enumerate(outs):
        metrics = _metrics(models[i], datas[i], files[i], features[i], model_name, cfg,
                           evaluations, histories[i]) | {"stacked": len(outs)}
        save_trained(out / "model.pt", model=models[i], name=model_name, cfg=cfg,
                     data=datas[i], features=features[i], attrs=files[i].attrs)
        write_json(out / "metrics.json", metrics)
        results.append(metrics)
    for logger in loggers:
        logger.close()
    return results


def _spec(model_name: str) -> ModelSpec:
    if model_name not in MODELS:
        raise UserError(f"--model: unknown model {model_name!r}; expected one of "
                        f"{', '.join(MODEL_NAMES)}")
    return MODELS[model_name]


def _read(features: Path, model_name: str, spec: ModelSpec) -> FeatureSet:
    """The features file, checked for this model (raises UserError before anything is written)."""
    data_file = read_features(features)
    if spec.multimodal and len(data_file.modalities) < 2:
        raise UserError(f"{features}: model {model_name!r} needs two modalities, the file has "
                        f"{data_file.modalities}")
    return data_file


def _shape(data_file: FeatureSet) -> tuple[tuple[tuple[str, int], ...], int]:
    """What fixes a model's architecture: (modality, dimension) pairs and the class count."""
    dims = tuple((m, int(data_file.features[m].shape[1])) for m in data_file.modalities)
    return dims, len(data_file.categories)


def _build(model_name: str, data: TrialData, cfg: TrainConfig,
           device: torch.device) -> nn.Module:
    torch.manual_seed(cfg.seed)  # the initial weights are part of what the seed fixes
    share = len(data.labelled) / (len(data.labelled) + len(data.unlabelled))
    return build_model(model_name, data.dims, len(data.categories), cfg,
                       labelled_share=share).to(device)


def _settings(cfg: TrainConfig, device: torch.device) -> FitSettings:
    compiled = cfg.compile == "always" or (cfg.compile == "auto" and device.type == "cuda")
    return FitSettings(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                       labeled_batch_size=cfg.labeled_batch_size, seed=cfg.seed,
                       grad_clip=cfg.grad_clip, precision=cfg.precision, compile=compiled)


def _fingerprint(features: Path, model_name: str, cfg: TrainConfig) -> dict[str, Any]:
    return {"model": model_name, "features": file_sha256(features),
            "config": json.dumps(dataclasses.asdict(cfg), sort_keys=True)}


def _start(out: Path, cfg: TrainConfig) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", dataclasses.asdict(cfg))


def _cheap_accuracy(model: nn.Module, data: TrialData, evaluations: list[Evaluation],
                    cfg: TrainConfig) -> dict[str, float]:
    """Per-epoch test accuracy for the learning curves (iterative sampling left out)."""
    cheap = [e for e in evaluations if e.method != "iterative"]
    return table_row(evaluate(model, data.test, cheap, data.scaler, cfg), cheap)


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
        "trial": _plain(data_file.attrs.get("trial")),
    }
    return metrics


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


class _Live:
    """Per-epoch metrics through DVCLive, in a folder the stage owns (dvc.yaml untouched)."""

    def __init__(self, folder: Path, *, resume: bool) -> None:
        from dvclive import Live

        self._live = Live(str(folder), resume=resume, dvcyaml=None, save_dvc_exp=False,
                          report=None)

    def log(self, epoch: int, means: dict[str, float], accuracy: dict[str, float]) -> None:
        self._live.step = epoch
        for name, value in means.items():
            self._live.log_metric(f"train/{name}", value)
        for key, value in accuracy.items():
            self._live.log_metric(f"test/accuracy/{key}", value)
        self._live.next_step()

    def close(self) -> None:
        self._live.end()
