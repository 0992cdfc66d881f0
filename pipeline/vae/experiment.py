"""Train one model on one features file and write its metrics (the `train` stage's work).

`DIR/metrics.json` (the form DESIGN.md gives):
    {"model": "ss_hmvae", "accuracy": {"rgb": .., "depth": .., "rgb+depth": ..},
     "accuracy_iterative": {...}, "accuracy_by_method": {method: {key: acc}}, ...}
`accuracy` holds, for each input, the number Table 1 reports for the model.
Also in DIR: `checkpoint.pt` (resumable, per epoch), `config.json` (the effective
parameters) and `dvclive/` (per-epoch loss terms and test accuracy).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from pipeline.config import TrainConfig
from pipeline.devices import resolve_device
from pipeline.distributed import SINGLE, World
from pipeline.errors import UserError
from pipeline.store import read_features
from pipeline.vae import MODELS, build_model
from pipeline.vae.data import prepare
from pipeline.vae.evaluate import evaluate, table_row
from pipeline.vae.training import FitSettings, autocast_dtype, fit


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
    if model_name not in MODELS:
        raise UserError(f"--model: unknown model {model_name!r}; expected one of "
                        f"{', '.join(MODELS)}")
    spec = MODELS[model_name]
    data_file = read_features(features)  # every check on the file happens before out/ exists
    if spec.multimodal and len(data_file.modalities) < 2:
        raise UserError(f"{features}: model {model_name!r} needs two modalities, the file has "
                        f"{data_file.modalities}")
    device = device or resolve_device(cfg.device)
    data = prepare(data_file, cfg.likelihood, device)
    torch.manual_seed(cfg.seed)  # the initial weights are part of what the seed fixes
    model = build_model(model_name, data.dims, len(data.categories), cfg).to(device)
    evaluations = spec.evaluations(data.modalities)
    settings = FitSettings(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                           labeled_batch_size=cfg.labeled_batch_size, seed=cfg.seed,
                           grad_clip=cfg.grad_clip, precision=cfg.precision,
                           compile=cfg.compile == "always"
                           or (cfg.compile == "auto" and device.type == "cuda"))
    fingerprint = {"model": model_name, "features": file_sha256(features),
                   "config": json.dumps(dataclasses.asdict(cfg), sort_keys=True)}
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    cheap = [e for e in evaluations if e.method != "iterative"]
    precision = autocast_dtype(cfg.precision)
    logger = (_Live(out / "dvclive", resume=(out / "checkpoint.pt").is_file())
              if live and world.is_main else None)

    def on_epoch(epoch: int, means: dict[str, float]) -> None:
        if logger is None:
            return
        accuracy = table_row(evaluate(model, data.test, cheap, data.scaler, iterative_steps=0,
                                      precision=precision), cheap)
        logger.log(epoch, means, accuracy)

    history = fit(model, data, settings, checkpoint=out / "checkpoint.pt",
                  fingerprint=fingerprint, on_epoch=on_epoch, progress=progress, world=world)
    results = evaluate(model, data.test, evaluations, data.scaler,
                       iterative_steps=cfg.iterative_steps, seed=cfg.seed, precision=precision)
    metrics: dict[str, Any] = {"model": model_name, "accuracy": table_row(results, evaluations)}
    if "iterative" in results:
        # Table 1's iterative-sampling row: joint input needs no sampling.
        metrics["accuracy_iterative"] = results["iterative"] | results["joint"]
    metrics |= {
        "accuracy_by_method": results,
        "epochs": len(history),
        "final_loss": history[-1]["loss"] if history else None,
        "n_labelled": len(data.labelled), "n_unlabelled": len(data.unlabelled),
        "n_test": len(data.test), "features": str(features),
        "trial": _plain(data_file.attrs.get("trial")),
    }
    if world.is_main:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if logger is not None:
        logger.close()
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
