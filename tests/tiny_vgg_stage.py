"""`python tests/tiny_vgg_stage.py STAGE ...`: `python -m pipeline STAGE ...` with a tiny VGG.

For tests that start and kill the VGG stages many times (tests/test_fault_injection.py):
the stage code is the real one, but the network has VGG16's module layout (features,
avgpool, classifier with fc1 at classifier[0] and 4096 outputs, the class layer at
classifier[6]) and ~70k parameters instead of 138M, so a fine-tuning run writes a 0.3 MB
model instead of 0.5 GB and takes a fraction of a second per epoch on a CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.__main__ import main
from pipeline.features import vgg


def tiny_vgg16(weights: None = None, num_classes: int = 1000) -> nn.Module:
    model = nn.Module()
    model.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4))
    model.avgpool = nn.AdaptiveAvgPool2d((2, 2))
    model.classifier = nn.Sequential(
        nn.Linear(16, vgg.FC1_DIM), nn.ReLU(), nn.Dropout(),
        nn.Linear(vgg.FC1_DIM, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, num_classes))

    def forward(x):
        return model.classifier(model.avgpool(model.features(x)).flatten(1))

    model.forward = forward
    return model


if __name__ == "__main__":
    vgg.vgg16 = tiny_vgg16
    sys.exit(main(sys.argv[1:]))
