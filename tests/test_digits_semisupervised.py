"""Real data, real training: the unlabelled data must buy accuracy (Section 4's claim).

scikit-learn's digits as two views (left / right half of each image), 5% of the training
set labelled. SS-HMVAE-kl is compared with the labelled-only MLP trained with the same
layers, steps and seed: it must beat it on the joint input and on the weaker view.
"""

import pytest

from pipeline.config import load_config
from pipeline.store import write_features
from pipeline.vae.experiment import train_and_evaluate
from tests.digits import digits_views

SETTINGS = ["train.epochs=100", "train.lr=1e-3", "train.alpha=50", "train.hidden=128",
            "train.a_dim=32", "train.z_dim=32"]


@pytest.mark.slow
def test_ss_hmvae_kl_beats_labelled_only_on_digits(tmp_path):
    features = tmp_path / "digits.h5"
    write_features(features, digits_views(seed=0))
    cfg = load_config(None, SETTINGS).train
    ours = train_and_evaluate(features, "ss_hmvae_kl", cfg, tmp_path / "kl", progress=False,
                              live=False)["accuracy"]
    baseline = train_and_evaluate(features, "mlp", cfg, tmp_path / "mlp", progress=False,
                                  live=False)["accuracy"]
    weaker = min(("left", "right"), key=baseline.get)
    assert ours["left+right"] > baseline["left+right"], (ours, baseline)
    assert ours[weaker] > baseline[weaker], (ours, baseline)
