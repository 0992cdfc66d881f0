"""Accuracy of a trained model for every input mode its row of Table 1 needs.

Each evaluation runs with the configured prediction option (`configured`: Table 1's number)
and, for the final metrics, with every option that applies to the model (`variants`): the
posterior-mean shortcut q(y | E[a]) against the Monte-Carlo average E_q(a|.)[q(y|a)] where
the classifier sits behind a latent, and for iterative sampling the mean of p(x|a) against a
draw from it as the fill. An option names only these two choices; the numbers (draws, steps,
seed, precision) are read from the `TrainConfig` itself.

Random draws are common random numbers (`objective.shared_noise`): the s-th draw of a call is
one noise vector, seeded by `train.seed`, shared by every row, so a row's prediction depends
only on that row and the model, never on its batch or its position in it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pipeline.config import FILLS, PREDICTIONS, TrainConfig
from pipeline.devices import autocast_dtype
from pipeline.vae import Evaluation
from pipeline.vae.data import FeatureScaler
from pipeline.vae.modes import eval_mode
from pipeline.vae.objective import Batch, Tensors

EVAL_BATCH = 1024


@dataclass(frozen=True)
class Option:
    """One way to classify: `prediction` is `train.prediction`'s choice, or "exact" where no
    latent sits in front of q(y|.) (nothing to average over); `fill` is
    `train.iterative_fill`'s choice (read by iterative sampling only)."""

    prediction: str
    fill: str

    def samples(self, cfg: TrainConfig) -> int:
        """Draws of the latent averaged in q(y|.); 0 = the posterior mean (or exact)."""
        return cfg.predict_samples if self.prediction == "monte_carlo" else 0


def option(model: nn.Module, evaluation: Evaluation, prediction: str, fill: str
           ) -> tuple[str, Option]:
    """(name in `accuracy_by_option`, option) of the choices `prediction` and `fill`."""
    if not getattr(model, "latent_classifier", False):
        prediction = "exact"
    if evaluation.method == "iterative":
        return f"{fill}_fill/{prediction}", Option(prediction, fill)
    return prediction, Option(prediction, fill)


def configured(model: nn.Module, evaluation: Evaluation, cfg: TrainConfig
               ) -> tuple[str, Option]:
    """The configured option (Table 1's number) and its name."""
    return option(model, evaluation, cfg.prediction, cfg.iterative_fill)


def variants(model: nn.Module, evaluation: Evaluation, cfg: TrainConfig) -> dict[str, Option]:
    """Every prediction option that applies to `model` for `evaluation`, by name."""
    fills = FILLS if evaluation.method == "iterative" else (cfg.iterative_fill,)
    return dict(option(model, evaluation, p, f) for f in fills for p in PREDICTIONS)


@torch.no_grad()
def predict(model: nn.Module, x: Tensors, evaluation: Evaluation, scaler: FeatureScaler,
            cfg: TrainConfig, chosen: Option | None = None) -> torch.Tensor:
    """Class log-probabilities for one evaluation; `x` holds every modality (scaled);
    `chosen` None: the configured option."""
    chosen = chosen or configured(model, evaluation, cfg)[1]
    return predict_each(model, x, evaluation, scaler, cfg, [chosen])[0]


@torch.no_grad()
def predict_each(model: nn.Module, x: Tensors, evaluation: Evaluation, scaler: FeatureScaler,
                 cfg: TrainConfig, options: list[Option]) -> list[torch.Tensor]:
    """`predict` for several options at once: the missing modality is filled once per fill
    (iterative sampling's chain does not depend on the prediction option), and each option
    classifies from the generator state `predict` alone would have, so the results are
    those of separate calls."""
    device = next(iter(x.values())).device
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    start = generator.get_state()
    precision = autocast_dtype(cfg.precision, device)
    completed: dict[str, tuple[Tensors, torch.Tensor]] = {}
    out = []
    with torch.autocast(device.type, dtype=precision or torch.float32,
                        enabled=precision is not None):
        for chosen in options:
            if chosen.fill not in completed:
                generator.set_state(start)
                inputs = _complete(model, x, evaluation, scaler, cfg, chosen.fill, generator)
                completed[chosen.fill] = inputs, generator.get_state()
            inputs, state = completed[chosen.fill]
            generator.set_state(state)
            method = "joint" if evaluation.method in ("zero_fill", "iterative") else \
                evaluation.method
            out.append(model.classify(inputs, method, samples=chosen.samples(cfg),
                                      generator=generator))
    return out


def _complete(model: nn.Module, x: Tensors, evaluation: Evaluation, scaler: FeatureScaler,
              cfg: TrainConfig, fill: str, generator: torch.Generator) -> Tensors:
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
            given[m] = model.impute(given, m, cfg.iterative_steps, generator, fill=fill)
    else:
        return given
    return {m: given[m] for m in x}


def accuracies(model: nn.Module, test: Batch, evaluation: Evaluation, scaler: FeatureScaler,
               cfg: TrainConfig, options: list[Option]) -> list[float]:
    """Test accuracy of one evaluation with each option, in batches (eval mode)."""
    correct = [0] * len(options)
    with eval_mode(model):
        for start in range(0, len(test), EVAL_BATCH):
            x = {m: t[start:start + EVAL_BATCH] for m, t in test.x.items()}
            y = test.y[start:start + EVAL_BATCH]
            for i, log_probs in enumerate(predict_each(model, x, evaluation, scaler, cfg,
                                                       options)):
                correct[i] += int((log_probs.argmax(-1) == y).sum())
    return [c / len(test) for c in correct]


def evaluate(model: nn.Module, test: Batch, evaluations: list[Evaluation],
             scaler: FeatureScaler, cfg: TrainConfig) -> dict[str, dict[str, float]]:
    """{method: {key: accuracy}} over the test set with the configured options."""
    results: dict[str, dict[str, float]] = {}
    for e in evaluations:
        results.setdefault(e.method, {})[e.key] = accuracies(
            model, test, e, scaler, cfg, [configured(model, e, cfg)[1]])[0]
    return results


def evaluate_options(model: nn.Module, test: Batch, evaluations: list[Evaluation],
                     scaler: FeatureScaler, cfg: TrainConfig
                     ) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {option: {key: accuracy}}} for every option that applies (`variants`)."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    for e in evaluations:
        named = variants(model, e, cfg)
        scores = accuracies(model, test, e, scaler, cfg, list(named.values()))
        for name, score in zip(named, scores, strict=True):
            results.setdefault(e.method, {}).setdefault(name, {})[e.key] = score
    return results


def table_row(results: dict[str, dict[str, float]],
              evaluations: list[Evaluation]) -> dict[str, float]:
    """The accuracies Table 1 reports: the primary evaluation for each key."""
    return {e.key: results[e.method][e.key] for e in evaluations if e.primary}
