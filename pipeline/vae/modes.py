"""Context managers for a model's or torch's mode during a block (training and inference)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn
from torch.distributions import Distribution


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@contextlib.contextmanager
def unchecked_distributions() -> Iterator[None]:
    """Skip torch.distributions' argument checks while training: each is a host sync on
    CUDA (`.all()`), and a NaN they would catch is caught at the epoch's end anyway."""
    was = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(was)
