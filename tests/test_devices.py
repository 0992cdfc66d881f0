"""One precision rule for every stage: auto is bf16 only where the device computes it natively.

On a CPU without AMX or AVX512-BF16 torch emulates bf16 and a matmul was 7-80x slower than in
fp32 (AMD EPYC, AVX2): `auto` must not pick it there, and an explicit bf16 gets one warning.
"""

from __future__ import annotations

import logging

import pytest
import torch

from pipeline import devices
from pipeline.devices import autocast_dtype

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_exactly_where_the_cpu_has_it(monkeypatch, native):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert devices.native_bf16(CPU) is native
    assert autocast_dtype("auto", CPU) is (torch.bfloat16 if native else None)
    assert autocast_dtype("fp32", CPU) is None


def test_avx512_bf16_without_amx_counts_as_native(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert autocast_dtype("auto", CPU) is torch.bfloat16


def test_asking_for_emulated_bf16_is_honoured_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    devices._warn_emulated.cache_clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.devices"):
        assert autocast_dtype("bf16", CPU) is torch.bfloat16
        assert autocast_dtype("bf16", CPU) is torch.bfloat16
    warnings = [r.getMessage() for r in caplog.records if r.name == "pipeline.devices"]
    assert len(warnings) == 1 and "without native bf16" in warnings[0]
    assert "precision auto picks fp32" in warnings[0]
    devices._warn_emulated.cache_clear()

