"""The classical peers of Table 1: co-training and label spreading on the same features file.

Unlike `pipeline/vae`, these train no network: scikit-learn's linear SVMs, k-means and
`LabelSpreading`, with the co-training loop written here (`cotrain.py`, this project's own:
the paper's CT+SVM and Co-training rows are Cheng et al.'s, on CNNs, which we do not have),
its round picked on held-out labelled rows (`validation.py`). The stages send these names
to `experiment.train_and_evaluate_classical`, which writes the same files
as the generative models (metrics.json with rgb / depth / rgb+depth, config.json, ...).
This module imports nothing heavy (the classical stage lists its names in its help).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClassicalSpec:
    multimodal: bool  # needs exactly two modalities (one classifier per view)


CLASSICAL: dict[str, ClassicalSpec] = {
    # our own co-training; the paper's rows of these names (†, copied from Cheng et al.)
    # are numbers the report shows apart
    "ct_svm": ClassicalSpec(multimodal=True),  # titles: pipeline/titles.py
    "cotraining": ClassicalSpec(multimodal=True),
    "label_spreading": ClassicalSpec(multimodal=False),
}
