"""fc1 features of every frame of a trial, both modalities, into `ssmvae-features/1`.

fc1 is torchvision's `classifier[:2]`: the first 4096-d Linear layer and its ReLU, so every
feature is >= 0 (the paper's x, w in R_{>0}^4096). Frames are streamed from the images file
in batches under `torch.inference_mode`, and written block by block into a chunked file
under a temporary name that is renamed when complete (`store.FeaturesWriter`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.config import ExtractConfig
from pipeline.devices import resolve_device
from pipeline.errors import UserError
from pipeline.features import vgg
from pipeline.store import FeaturesWriter, TrialSplit, open_images, read_images_index, read_split

log = logging.getLogger(__name__)


class CheckpointError(UserError):
    """A fine-tuned checkpoint is missing, unreadable or made for other data."""


def load_checkpoint(path: str | Path, *, trial: int, modality: str,
                    categories: list[str]) -> tuple[nn.Module, dict[str, Any], str]:
    """Return (model in eval mode, its meta, the file's sha256); check it fits this data."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; run the finetune stage for "
                              f"trial {trial}, modality {modality} first")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        meta, weights = saved["meta"], saved["state_dict"]
    except Exception as err:  # torch raises many types for a file that is not ours
        raise CheckpointError(f"{path}: not a checkpoint of the finetune stage ({err})") from err
    found = (meta.get("trial"), meta.get("modality"), list(meta.get("categories", [])))
    if found != (trial, modality, list(categories)):
        raise CheckpointError(f"{path}: made for trial {found[0]}, modality {found[1]} and "
                              f"{len(found[2])} categories; expected trial {trial}, modality "
                              f"{modality} and the images file's {len(categories)} categories")
    try:
        model = vgg.load_vgg16(len(categories), weights)
    except RuntimeError as err:  # missing keys or wrong shapes
        raise CheckpointError(f"{path}: does not hold VGG16 weights ({err})") from err
    return model.eval(), meta, vgg.sha256_file(path)


def _provenance(metas: Mapping[str, dict[str, Any]], hashes: Mapping[str, str],
                split: TrialSplit, config: ExtractConfig, device: torch.device) -> dict[str, Any]:
    first = next(iter(metas.values()))
    for key in ("image_size", "weights", "weights_sha256", "seed"):
        values = {m: meta[key] for m, meta in metas.items()}
        if len(set(values.values())) > 1:
            raise CheckpointError(f"the checkpoints disagree on {key}: {values}; fine-tune "
                                  "both modalities with the same parameters")
    train = ~split.is_test
    attrs = {"trial": split.trial, "backbone": "vgg16", "layer": vgg.LAYER,
             "image_size": first["image_size"], "weights": first["weights"],
             "weights_sha256": first["weights_sha256"], "seed": first["seed"],
             "labeled_fraction": float(split.is_labeled[train].mean()) if train.any() else 0.0,
             "finetune_epochs": first["epochs"], "normalization_mean": list(vgg.MEAN),
             "normalization_std": list(vgg.STD),
             "precision": "bf16" if vgg.autocast_dtype(config.precision, device) else "fp32"}
    attrs.update({f"checkpoint_sha256_{m}": h for m, h in hashes.items()})
    return attrs


@torch.inference_mode()
def features_of(model: nn.Module, images: np.ndarray, *, image_size: int,
                device: torch.device, dtype: torch.dtype | None) -> np.ndarray:
    """fc1 (after ReLU) of a uint8 [B, S, S, 3] batch, as float32 [B, 4096]."""
    batch = torch.from_numpy(images)
    if device.type == "cuda":
        batch = batch.pin_memory()  # lets the copy to the GPU run asynchronously
    x = vgg.to_input(batch, image_size, device)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        h = vgg.fc1(model, x)
    return h.float().cpu().numpy()


def extract_features(*, images: str | Path, splits: str | Path, trial: int,
                     checkpoints: Mapping[str, str | Path], out: str | Path,
                     config: ExtractConfig) -> dict[str, Any]:
    """Write `out` for every frame of `trial`; return its provenance attributes."""
    device = resolve_device(config.device)
    dtype = vgg.autocast_dtype(config.precision, device)
    index = read_images_index(images)
    split = read_split(splits, trial, index.frame)
    models, metas, hashes = {}, {}, {}
    for modality, path in checkpoints.items():
        model, metas[modality], hashes[modality] = load_checkpoint(
            path, trial=trial, modality=modality, categories=index.categories)
        models[modality] = model.to(device)
        if device.type == "cuda":
            model.to(memory_format=torch.channels_last)
    attrs = _provenance(metas, hashes, split, config, device)
    n, size = len(index), attrs["image_size"]
    with open_images(images) as f, \
            FeaturesWriter(out, n=n, dims=dict.fromkeys(models, vgg.FC1_DIM),
                           categories=index.categories, attrs=attrs) as writer, \
            tqdm(total=n, unit="frame", desc=f"extract trial {trial}", mininterval=1.0) as bar:
        for start in range(0, n, config.batch_size):
            stop = min(n, start + config.batch_size)
            feats = {m: features_of(model, f[m][start:stop], image_size=size, device=device,
                                    dtype=dtype) for m, model in models.items()}
            writer.write(start, features=feats, label=index.label[start:stop],
                         is_test=split.is_test[start:stop],
                         is_labeled=split.is_labeled[start:stop], frame=index.frame[start:stop])
            bar.update(stop - start)
    log.info("%s: %d frames, %s x %d features", out, n, "+".join(models), vgg.FC1_DIM)
    return attrs
