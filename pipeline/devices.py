"""Which torch device a stage runs on: one rule for every stage."""

from __future__ import annotations

import functools
import logging

import torch

from pipeline.errors import UserError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r}: CUDA is not available on this machine; use auto or cpu")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 matrices in hardware: a CUDA GPU that supports
    it, or a CPU with AMX or AVX512-BF16. Elsewhere (an AVX2 CPU, most laptops) torch
    emulates bf16, and a matmul is 7-80x slower than in fp32 (measured on an AMD EPYC with
    AVX2 only; docs/scale.md)."""
    if device.type == "cuda":
        # a GPU before Ampere emulates bf16, which torch counts unless told not to
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a `precision` setting, one rule for every stage: bf16 is
    bfloat16, fp32 none, auto bfloat16 where `device` computes it natively (`native_bf16`)
    and none elsewhere. bf16 asked for where it is emulated is honoured, with one warning."""
    if precision == "fp32":
        return None
    native = native_bf16(device)
    if precision == "bf16" and not native:
        _warn_emulated(device.type)
    return torch.bfloat16 if precision == "bf16" or native else None


@functools.cache
def _warn_emulated(device_type: str) -> None:
    log.warning("precision bf16 on a %s without native bf16 (no AMX or AVX512-BF16): torch "
                "emulates it, many times slower than fp32; precision auto picks fp32 here",
                device_type)
