"""The classical peers of Table 1: co-training and label spreading on the same features file.

Unlike `pipeline/vae`, these train no network: scikit-learn's linear SVMs, k-means and
`LabelSpreading`, with the co-training loop written here (`cotrain.py`). The `classical` stage
sends these names to `experiment.train_and_evaluate_classical`, which writes the same files
as the generative models (metrics.json with rgb / depth / rgb+depth, config.json, ...).
This module imports nothing heavy (the classical stage lists its names in its help).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClassicalSpec:
    title: str  # the row name in Table 1
    multimodal: bool  # needs exactly two modalities (one classifier per view)


CLASSICAL: dict[str, ClassicalSpec] = {
    "ct_svm": ClassicalSpec("CT+SVM (Cheng et al., 2015), on fc1 features", True),
    "cotraining": ClassicalSpec(
        "Co-training (Cheng et al., 2016), SVMs on fine-tuned fc1 features, not CNNs", True),
    "label_spreading": ClassicalSpec("Label spreading (kNN graph)", False),
}
