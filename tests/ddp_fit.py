"""Train a tiny SS-HMVAE-kl on the digits with `fit`, alone or as one process of torchrun.

    python tests/ddp_fit.py OUT                                    # one process
    python -m torch.distributed.run --nproc-per-node 2 tests/ddp_fit.py OUT   # two (gloo)

Each process saves its parameters, BatchNorm statistics, loss history and test accuracy to
OUT/rank-R.pt, for tests/test_distributed.py to compare.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import distributed
from pipeline.config import TrainConfig
from pipeline.store import FeatureSet
from pipeline.vae import MODELS, build_model
from pipeline.vae.data import prepare
from pipeline.vae.evaluate import evaluate
from pipeline.vae.training import fit

# 62 labelled, 1196 unlabelled: every batch (32 labelled, 64 unlabelled, the last 44)
# splits evenly in two, so two processes see exactly the batches one process sees.
N_LABELLED, N_UNLABELLED, N_TEST = 62, 1196, 300


def two_views(seed: int = 0, classes: int = 5, dim: int = 12) -> FeatureSet:
    """Two noisy views of class means. Dense features on purpose: a feature (nearly)
    constant over a batch has a gradient of rounding size, which Adam scales up to a full
    step whose sign depends on the order of additions (see test_distributed.py)."""
    rng = np.random.default_rng(seed)
    n = N_LABELLED + N_UNLABELLED + N_TEST
    label = rng.integers(0, classes, n)
    means = {m: rng.normal(size=(classes, dim)) for m in ("left", "right")}
    features = {m: (mu[label] + rng.normal(size=(n, dim))).astype(np.float32)
                for m, mu in means.items()}
    is_labeled = np.zeros(n, bool)
    is_labeled[:N_LABELLED] = True
    is_test = np.zeros(n, bool)
    is_test[-N_TEST:] = True
    return FeatureSet(features=features, label=label.astype(np.int64), is_test=is_test,
                      is_labeled=is_labeled, categories=[str(c) for c in range(classes)])
CONFIG = TrainConfig(hidden=16, a_dim=4, z_dim=4, dropout=0.5, precision="fp32", epochs=2,
                     lr=1e-3, batch_size=64, labeled_batch_size=32, seed=3,
                     prediction="posterior_mean")


def main(out: Path) -> None:
    torch.set_num_threads(1)
    world = distributed.world_from_env()
    device = distributed.init(world, torch.device("cpu"), "gloo")
    data = prepare(two_views(), "gaussian", device)
    torch.manual_seed(0)
    model = build_model("ss_hmvae_kl", data.dims, len(data.categories), CONFIG)
    history = fit(model, data, CONFIG, progress=False, world=world)
    evaluations = MODELS["ss_hmvae_kl"].evaluations(data.modalities)
    accuracy = evaluate(model, data.test, evaluations, data.scaler, CONFIG)
    torch.save({"state": model.state_dict(), "history": history, "accuracy": accuracy,
                "world": world.size}, out / f"rank-{world.rank}.pt")
    distributed.shutdown(world)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
