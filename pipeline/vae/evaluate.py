"""Accuracy of a trained model for every input mode its row of Table 1 needs."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.vae import Evaluation
from pipeline.vae.data import FeatureScaler
from pipeline.vae.objective import Batch, Tensors
from pipeline.vae.training import eval_mode

EVAL_BATCH = 1024


@torch.no_grad()
def predict(model: nn.Module, x: Tensors, evaluation: Evaluation, scaler: FeatureScaler, *,
            iterative_steps: int, seed: int, precision: torch.dtype | None) -> torch.Tensor:
    """Predicted classes for one evaluation; `x` holds every modality (scaled)."""
    given = {m: x[m] for m in evaluation.inputs}
    missing = [m for m in x if m not in given]
    generator = torch.Generator(device=next(iter(x.values())).device).manual_seed(seed)
    device_type = next(iter(x.values())).device.type
    with torch.autocast(device_type, dtype=precision or torch.float32,
                        enabled=precision is not None):
        if evaluation.method == "zero_fill":
            for m in missing:
                zeros = scaler.transform(m, np.zeros((1, x[m].shape[1]), np.float32))
                given[m] = torch.from_numpy(zeros).to(x[m].device).expand_as(x[m])
            logits = model.classify({m: given[m] for m in x}, "joint")
        elif evaluation.method == "iterative":
            for m in missing:
                given[m] = model.impute(given, m, iterative_steps, generator)
            logits = model.classify({m: given[m] for m in x}, "joint")
        else:
            logits = model.classify(given, evaluation.method)
    return logits.argmax(-1)


def evaluate(model: nn.Module, test: Batch, evaluations: list[Evaluation],
             scaler: FeatureScaler, *, iterative_steps: int, seed: int = 0,
             precision: torch.dtype | None = None) -> dict[str, dict[str, float]]:
    """{method: {key: accuracy}} over the test set, in eval mode, in batches."""
    results: dict[str, dict[str, float]] = {}
    with eval_mode(model):
        for evaluation in evaluations:
            correct = 0
            for start in range(0, len(test), EVAL_BATCH):
                x = {m: t[start:start + EVAL_BATCH] for m, t in test.x.items()}
                pred = predict(model, x, evaluation, scaler, iterative_steps=iterative_steps,
                               seed=seed + start, precision=precision)
                correct += int((pred == test.y[start:start + EVAL_BATCH]).sum())
            results.setdefault(evaluation.method, {})[evaluation.key] = correct / len(test)
    return results


def table_row(results: dict[str, dict[str, float]],
              evaluations: list[Evaluation]) -> dict[str, float]:
    """The accuracies Table 1 reports: the primary evaluation for each key."""
    return {e.key: results[e.method][e.key] for e in evaluations if e.primary}
