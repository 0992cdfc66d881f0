"""The paths only CUDA takes: bf16 autocast, fused Adam, torch.compile, pinned transfers.

Marked `cuda` and skipped where no GPU is visible (`pytest -m cuda` runs only these). Each
checks that the path is taken and gives what the CPU path gives, to bf16's tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.devices import autocast_dtype
from pipeline.engine import adam
from pipeline.features import vgg
from pipeline.features.extract import features_of, iter_features
from pipeline.store import ImagesWriter, read_features, write_features
from pipeline.vae import build_model
from pipeline.vae.data import prepare
from pipeline.vae.training import fit
from tests.digits import digits_views
from tests.test_train import tiny_config
from tests.tiny_vgg_stage import tiny_vgg16

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    path = tmp_path_factory.mktemp("features") / "digits.h5"
    write_features(path, digits_views(seed=0))
    return read_features(path)


def test_autocast_is_bf16_on_cuda_and_features_match_fp32():
    assert autocast_dtype("auto", CUDA) is torch.bfloat16
    torch.manual_seed(0)
    model = tiny_vgg16(num_classes=5).eval()
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    cpu = features_of(model, images, image_size=32, device=torch.device("cpu"), dtype=None)
    gpu = features_of(model.to(CUDA), images, image_size=32, device=CUDA,
                      dtype=torch.bfloat16)
    assert gpu.dtype == np.float32 and gpu.shape == (6, vgg.FC1_DIM)
    np.testing.assert_allclose(gpu, cpu, rtol=0.05, atol=0.05)


def test_adam_is_fused_on_cuda():
    assert adam(torch.nn.Linear(4, 2).to(CUDA), 1e-3).defaults["fused"]


@pytest.mark.parametrize("compiled", [False, True])
def test_training_on_cuda_lands_where_the_cpu_does(digits, compiled):
    """bf16 autocast, fused Adam and (compiled) torch.compile of the loss on the GPU."""
    losses = {}
    for device in (torch.device("cpu"), CUDA):
        data = prepare(digits, "gaussian", device)
        cfg = tiny_config(epochs=2, lr=1e-3, batch_size=128, labeled_batch_size=32, seed=1,
                          precision="bf16",
                          compile="always" if compiled and device.type == "cuda" else "never")
        torch.manual_seed(0)
        model = build_model("ss_mvae", data.dims, 10, cfg).to(device)
        history = fit(model, data, cfg, progress=False)
        assert next(model.parameters()).device.type == device.type
        losses[device.type] = history[-1]["loss"]
    assert np.isfinite(losses["cuda"])
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=0.05)


def test_extraction_reads_pinned_blocks_and_matches_the_cpu(tmp_path):
    n, size = 40, 32
    rng = np.random.default_rng(1)
    path = tmp_path / "images.h5"
    with ImagesWriter(path, size=size, categories=["a", "b"]) as writer:
        writer.append(rgb=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                      depth=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                      label=[k % 2 for k in range(n)], frame=[f"a_1_1_{k}" for k in range(n)],
                      instance=["a_1"] * n, video=[1] * n, index=list(range(n)))
    torch.manual_seed(0)
    nets = {m: vgg.Fc1(tiny_vgg16(num_classes=2).eval()) for m in ("rgb", "depth")}
    out = {}
    for device, workers in ((torch.device("cpu"), 0), (CUDA, 2)):
        for net in nets.values():
            net.to(device)
        rows = list(iter_features(path, nets, n=n, image_size=size, batch_size=16,
                                  workers=workers, device=device, dtype=None))
        assert [(a, b) for a, b, _ in rows] == [(0, 16), (16, 32), (32, 40)]
        out[device.type] = {m: np.concatenate([r[2][m] for r in rows]) for m in nets}
    for m in nets:
        np.testing.assert_allclose(out["cuda"][m], out["cpu"][m], rtol=1e-3, atol=1e-4)


def test_pinned_host_copies_are_pinned():
    batch = torch.zeros(4, 8, 8, 3, dtype=torch.uint8).pin_memory()
    assert batch.is_pinned()
    x = vgg.to_input(batch, 8, CUDA)
    assert x.is_cuda and x.is_contiguous(memory_format=torch.channels_last)
