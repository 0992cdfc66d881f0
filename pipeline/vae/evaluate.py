"""Accuracy of a trained model for every input mode its row of Table 1 needs.

Each evaluation runs with the configured prediction options (`PredictOptions.from_config`:
Table 1's number) and, for the final metrics, with every option that applies to the model
(`variants`): the posterior-mean shortcut q(y | E[a]) against the Monte-Carlo average
E_q(a|.)[q(y|a)] where the classifier sits behind a latent, and for iterative sampling the
mean of p(x|a) against a draw from it as the fill.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pipeline.config import TrainConfig
from pipeline.vae import Evaluation
from pipeline.vae.data import FeatureScaler
from pipeline.vae.modes import eval_mode
from pipeline.vae.objective import Batch, Tensors

EVAL_BATCH = 1024


@dataclass(frozen=True)
class PredictOptions:
    samples: int = 0  # draws of the latent averaged in q(y|.); 0 = the posterior mean
    fill: str = "mean"  # iterative sampling: "mean" of p(x|a) or a "sample" from it
    iterative_steps: int = 100

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> PredictOptions:
        samples = cfg.predict_samples if cfg.prediction == "monte_carlo" else 0
        return cls(samples=samples, fill=cfg.iterative_fill, iterative_steps=cfg.iterative_steps)


def variants(model: nn.Module, evaluation: Evaluation, cfg: TrainConfig
             ) -> dict[str, PredictOptions]:
    """Every prediction option that applies to `model` for `evaluation`, by name."""
    base = PredictOptions.from_config(cfg)
    if getattr(model, "latent_classifier", False):
        samples = {"posterior_mean": 0, "monte_carlo": cfg.predict_samples}
    else:
        samples = {"exact": 0}  # no latent in front of q(y|x): nothing to average over
    fills = ["mean", "sample"] if evaluation.method == "iterative" else [base.fill]
    out = {}
    for fill in fills:
        for name, s in samples.items():
            label = f"{fill}_fill/{name}" if evaluation.method == "iterative" else name
            out[label] = dataclasses.replace(base, samples=s, fill=fill)
    return out


@torch.no_grad()
def predict(model: nn.Module, x: Tensors, evaluation: Evaluation, scaler: FeatureScaler,
            options: PredictOptions, *, seed: int, precision: torch.dtype | None
            ) -> torch.Tensor:
    """Class log-probabilities for one evaluation; `x` holds every modality (scaled)."""
    return predict_each(model, x, evaluation, scaler, [options], seed=seed,
                        precision=precision)[0]


@torch.no_grad()
def predict_each(model: nn.Module, x: Tensors, evaluation: Evaluation, scaler: FeatureScaler,
                 options: list[PredictOptions], *, seed: int, precision: torch.dtype | None
                 ) -> list[torch.Tensor]:
    """`predict` for several options at once: the missing modality is filled once per fill
    (iterative sampling's chain does not depend on the prediction option), and each option
    classifies from the generator state `predict` alone would have, so the results are
    those of separate calls."""
    device = next(iter(x.values())).device
    generator = torch.Generator(device=device).manual_seed(seed)
    start = generator.get_state()
    completed: dict[str, tuple[Tensors, torch.Tensor]] = {}
    out = []
    with torch.autocast(device.type, dtype=precision or torch.float32,
                        enabled=precision is not None):
        for option in options:
            if option.fill not in completed:
                generator.set_state(start)
                inputs = _complete(model, x, evaluation, scaler, option, generator)
                completed[option.fill] = inputs, generator.get_state()
            inputs, state = completed[option.fill]
            generator.set_state(state)
            method = "joint" if evaluation.method in ("zero_fill", "iterative") else \
                evaluation.method
            out.append(model.classify(inputs, method, samples=option.samples,
                                      generator=generator))
    return out


def _complete(model: nn.Module, x: Tensors, evaluation: Evaluation, scaler: FeatureScaler,
              options: PredictOptions, generator: torch.Generator) -> Tensors:
    """The inputs the model classifies from: the given modalities, and for zero-fill and
    iterative sampling the missing ones filled in."""
    given = {m: x[m] for m in evaluation.inputs}
    missing = [m for m in x if m not in given]
    if evaluation.method == "zero_fill":
        for m in missing:
            zeros = scaler.transform(m, np.zeros((1, x[m].shape[1]), np.float32))
            given[m] = torch.from_numpy(zeros).to(x[m].device).expand_as(x[m])
    elif evaluation.method == "iterative":
        for m in missing:
            given[m] = model.impute(given, m, options.iterative_steps, generator,
                                    fill=options.fill)
    else:
        return given
    return {m: given[m] for m in x}


def accuracies(model: nn.Module, test: Batch, evaluation: Evaluation, scaler: FeatureScaler,
               options: list[PredictOptions], *, seed: int = 0,
               precision: torch.dtype | None = None) -> list[float]:
    """Test accuracy of one evaluation with each set of options, in batches (eval mode)."""
    correct = [0] * len(options)
    with eval_mode(model):
        for start in range(0, len(test), EVAL_BATCH):
            x = {m: t[start:start + EVAL_BATCH] for m, t in test.x.items()}
            y = test.y[start:start + EVAL_BATCH]
            for i, log_probs in enumerate(predict_each(model, x, evaluation, scaler, options,
                                                       seed=seed + start,
                                                       precision=precision)):
                correct[i] += int((log_probs.argmax(-1) == y).sum())
    return [c / len(test) for c in correct]


def accuracy(model: nn.Module, test: Batch, evaluation: Evaluation, scaler: FeatureScaler,
             options: PredictOptions, *, seed: int = 0,
             precision: torch.dtype | None = None) -> float:
    """Test accuracy of one evaluation with one set of options."""
    return accuracies(model, test, evaluation, scaler, [options], seed=seed,
                      precision=precision)[0]


def evaluate(model: nn.Module, test: Batch, evaluations: list[Evaluation],
             scaler: FeatureScaler, options: PredictOptions, *, seed: int = 0,
             precision: torch.dtype | None = None) -> dict[str, dict[str, float]]:
    """{method: {key: accuracy}} over the test set with the given options."""
    results: dict[str, dict[str, float]] = {}
    for e in evaluations:
        results.setdefault(e.method, {})[e.key] = accuracy(model, test, e, scaler, options,
                                                           seed=seed, precision=precision)
    return results


def evaluate_options(model: nn.Module, test: Batch, evaluations: list[Evaluation],
                     scaler: FeatureScaler, cfg: TrainConfig, *, seed: int = 0,
                     precision: torch.dtype | None = None
                     ) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {option: {key: accuracy}}} for every option that applies (`variants`)."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    for e in evaluations:
        named = variants(model, e, cfg)
        scores = accuracies(model, test, e, scaler, list(named.values()), seed=seed,
                            precision=precision)
        for name, score in zip(named, scores, strict=True):
            results.setdefault(e.method, {}).setdefault(name, {})[e.key] = score
    return results


def option_name(model: nn.Module, evaluation: Evaluation, cfg: TrainConfig) -> str:
    """The `variants` name of the configured options (Table 1's number)."""
    name = cfg.prediction if getattr(model, "latent_classifier", False) else "exact"
    return f"{cfg.iterative_fill}_fill/{name}" if evaluation.method == "iterative" else name


def table_row(results: dict[str, dict[str, float]],
              evaluations: list[Evaluation]) -> dict[str, float]:
    """The accuracies Table 1 reports: the primary evaluation for each key."""
    return {e.key: results[e.method][e.key] for e in evaluations if e.primary}
