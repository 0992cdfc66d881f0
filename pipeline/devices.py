"""Which torch device a stage runs on: one rule for every stage."""

from __future__ import annotations

import torch

from pipeline.errors import UserError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r}: CUDA is not available on this machine; use auto or cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device | None = None) -> torch.dtype | None:
    """The autocast dtype of a `precision` setting: bf16 always bfloat16; auto bfloat16 on
    CUDA only; anything else (fp32) none."""
    if precision == "bf16" or (precision == "auto" and device is not None
                               and device.type == "cuda"):
        return torch.bfloat16
    return None
