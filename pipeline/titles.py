"""The row titles of Table 1, by row id: what the report prints (imports nothing).

A model's row id is its name (`train.models`, `classical.models`); a row that one model's
runs add is `<model>_<section>` (`ss_hmvae_iterative`: the `accuracy_iterative` of
`metrics.json`; `ct_svm_start`: `accuracy_start`, the labelled-only SVMs co-training starts
from). `paper_*` rows hold numbers the paper copied from other papers (its †), no run of ours.
"""

from __future__ import annotations

TITLES: dict[str, str] = {
    "m2": "M2 (Kingma et al., 2014)",
    "sdgm": "SDGM (Maaløe et al., 2016)",
    "ss_mvae": "SS-MVAE",
    "ss_hmvae": "SS-HMVAE",
    "ss_hmvae_iterative": "SS-HMVAE (iterative sampling)",
    "ss_hmvae_kl": "SS-HMVAE-kl",
    "ct_svm": "co-training, linear SVMs on fc1, top-margin picks (ours)",
    "ct_svm_start": "its start: labelled-only linear SVMs on fc1",
    "cotraining": "co-training, linear SVMs on fc1, diverse picks (ours)",
    "cotraining_start": "its start: labelled-only linear SVMs on fc1",
    "paper_ct_svm": "CT+SVM† (Cheng et al., 2015), the paper's copied numbers",
    "paper_cotraining": "Co-training† (Cheng et al., 2016), the paper's copied numbers",
    "mlp": "MLP, labelled only (baseline)",
    "vgg16": "VGG16 fine-tuned, labelled only (supervised reference)",
    "label_spreading": "Label spreading (kNN graph)",
}


def title(row: str) -> str:
    """The title of row id `row`; an id without one is shown as it is."""
    return TITLES.get(row, row)
