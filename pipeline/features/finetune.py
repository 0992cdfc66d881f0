"""Fine-tune VGG16 for one modality on one trial's labelled frames (Appendix A).

Appendix A: Adam, learning rate 1e-5, 200 epochs, all parameters trained, on the labelled
set only. The checkpoint directory (`out`) holds:

- `state.pt`: the training engine's checkpoint (`pipeline.engine`: model + optimizer after
  a complete epoch), written atomically at most every `checkpoint_every` epochs while
  training and removed once `model.pt` is written (it is three times the model's size);
- `model.pt`: the final weights and `meta` (categories, image size, initial weights, ...);
- `metrics.json`: the network's own accuracy on the trial's test frames (the supervised
  reference row for Table 1) and its last training loss;
- `live/`: DVCLive's per-epoch metrics.

This module supplies the engine its epoch (batches, augmentation, step). Resuming is exact:
each epoch reseeds every random generator from (seed, epoch), so the state after epoch k is
a function of the weights and optimizer state saved at its start. A run whose settings
differ from the saved state starts afresh; a damaged `state.pt` is deleted with a message.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline import distributed, engine
from pipeline.atomic import torch_save, write_json
from pipeline.config import FinetuneConfig
from pipeline.devices import autocast_dtype, resolve_device
from pipeline.errors import UserError
from pipeline.features import vgg
from pipeline.store import TrialSplit, open_images, read_images_index, read_split

log = logging.getLogger(__name__)
MODALITIES = ("rgb", "depth")
_BLOCK = 512  # image rows read from HDF5 at once when streaming


def iter_rows(f: h5py.File, name: str, mask: np.ndarray,
              batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (row indices, uint8 images) of the rows where `mask`, in file order, `batch` at a
    time, reading the file block by block (never the whole dataset)."""
    rows, images = [], []
    for start in range(0, len(mask), _BLOCK):
        picked = np.flatnonzero(mask[start:start + _BLOCK])
        if picked.size == 0:
            continue
        block = f[name][start + picked[0]:start + picked[-1] + 1]
        rows.extend(start + picked)
        images.extend(block[picked - picked[0]])
        while len(rows) >= batch:
            yield np.asarray(rows[:batch]), np.stack(images[:batch])
            rows, images = rows[batch:], images[batch:]
    if rows:
        yield np.asarray(rows), np.stack(images)


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a shift of up to 1/8 of the side (reflected border)."""
    b, _, h, w = x.shape
    flip = (torch.rand(b, generator=gen) < 0.5).to(x.device).view(b, 1, 1, 1)
    x = torch.where(flip, x.flip(3), x)
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b), generator=gen).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def _fingerprint(index_frames: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> str:
    """Identify the labelled training data, so a changed split never resumes old state."""
    digest = hashlib.sha256()
    for frame, label in zip(index_frames[mask], labels[mask], strict=True):
        digest.update(f"{frame}\t{label}\n".encode())
    return digest.hexdigest()


def _settings(config: FinetuneConfig, info: vgg.WeightsInfo, *, trial: int, modality: str,
              categories: list[str], data: str) -> dict[str, Any]:
    """Everything a resumed run must share with the saved state (all but `epochs`)."""
    return {"trial": trial, "modality": modality, "categories": categories, "data": data,
            "weights": info.identity, "weights_sha256": info.sha256, "lr": config.lr,
            "batch_size": config.batch_size, "image_size": config.image_size,
            "augment": config.augment, "seed": config.seed, "precision": config.precision}


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, images: torch.Tensor,
                 labels: torch.Tensor, *, config: FinetuneConfig, epoch: int,
                 device: torch.device,
                 world: distributed.World = distributed.SINGLE) -> dict[str, float]:
    """One pass over the labelled frames; mean loss and accuracy over every process's shards.

    Under torchrun each process takes its equal, contiguous shard of every batch (after the
    batch is augmented whole, so each frame is transformed as in one process), and draws
    dropout masks through `ShardedRandomness`. The loss and the count of correct frames stay
    on the device until the epoch ends: no host synchronisation per step.
    """
    seed = epoch_seed(config.seed, epoch)
    torch.manual_seed(seed)  # dropout, on every device
    gen = torch.Generator().manual_seed(seed)  # shuffling and augmentation
    dtype = autocast_dtype(config.precision, device)
    model.train()
    # The order and the labels go to the device once per epoch, not per batch.
    order = torch.randperm(len(labels), generator=gen).to(images.device)
    labels = labels.to(device)
    totals = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, correct, frames
    randomness = ((lambda: distributed.ShardedRandomness(world)) if world.distributed
                  else contextlib.nullcontext)
    for batch in order.split(config.batch_size):
        x = vgg.to_input(images[batch], config.image_size, device)
        if config.augment:
            x = augment(x, gen)
        y = labels[batch.to(device)]
        start, stop = distributed.shard_bounds(len(batch), world)
        if start == stop:
            continue
        x, y = x[start:stop], y[start:stop]
        with randomness(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                          enabled=dtype is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        totals += torch.stack([loss.detach().double() * (stop - start),
                               (logits.argmax(1) == y).sum().double(),
                               torch.full((), stop - start, device=device,
                                          dtype=torch.float64)])
    if world.distributed:
        torch.distributed.all_reduce(totals)
    total_loss, correct, frames = totals.tolist()
    return {"loss": total_loss / frames, "accuracy": correct / frames}


@torch.inference_mode()
def evaluate(model: nn.Module, f: h5py.File, modality: str, mask: np.ndarray,
             labels: np.ndarray, *, image_size: int, batch_size: int, device: torch.device,
             precision: str) -> float:
    """Accuracy on the rows of `mask`, streamed from the images file."""
    model.eval()
    dtype = autocast_dtype(precision, device)
    correct = 0
    for rows, block in iter_rows(f, modality, mask, batch_size):
        batch = torch.from_numpy(block)
        if device.type == "cuda":
            batch = batch.pin_memory()  # lets the copy to the GPU run asynchronously
        x = vgg.to_input(batch, image_size, device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            pred = model(x).argmax(1).cpu().numpy()
        correct += int((pred == labels[rows]).sum())
    return correct / max(1, int(mask.sum()))


def _load_labeled(f: h5py.File, modality: str, mask: np.ndarray, device: torch.device,
                  batch: int) -> torch.Tensor:
    """The labelled frames (5% of the training set, ~115 MB at 148 px) as one uint8 tensor,
    kept on the GPU when there is one (copied once, through pinned memory)."""
    images = torch.from_numpy(np.concatenate([b for _, b in iter_rows(f, modality, mask, batch)]))
    if device.type == "cuda":
        images = images.pin_memory().to(device, non_blocking=True)
    return images


def _finished(out: Path, settings: dict[str, Any], epochs: int) -> dict[str, Any] | None:
    """The metrics of a completed run with the same settings, if `out` holds one."""
    model, metrics = out / "model.pt", out / "metrics.json"
    if not (model.is_file() and metrics.is_file()) or (out / "state.pt").exists():
        return None
    saved = engine.load_or_discard(model, mmap=True)
    if saved is None or saved.get("meta") != {**settings, **_extra_meta(epochs)}:
        return None
    try:
        done = json.loads(metrics.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # not whole: fine-tune again, which rewrites it
    log.info("%s: already fine-tuned with these settings", model)
    return done


def _extra_meta(epochs: int) -> dict[str, Any]:
    return {"epochs": epochs, "backbone": "vgg16", "normalization_mean": list(vgg.MEAN),
            "normalization_std": list(vgg.STD)}


def finetune(*, images: str | Path, splits: str | Path, trial: int, modality: str,
             out: str | Path, config: FinetuneConfig, cache_dir: str | Path,
             world: distributed.World = distributed.SINGLE,
             device: torch.device | None = None,
             prepare: Callable[[], None] | None = None) -> dict[str, Any]:
    """Fine-tune (or resume), write `model.pt` and `metrics.json` into `out`; return metrics.

    Nothing is written before the inputs (images, splits, initial weights) are checked;
    then the main process creates `out` and calls `prepare` (the stage's code stamp and
    `config.json`) before any process reads a saved state.

    Under torchrun (`world`, the process group initialised, `device` this process's) the
    model trains in DistributedDataParallel; the main process alone writes, evaluates and
    returns the metrics (the others return {}).
    """
    if modality not in MODALITIES:
        raise ValueError(f"expected modality in {MODALITIES}, got {modality!r}")
    out = Path(out)
    device = device or resolve_device(config.device)
    index = read_images_index(images)
    split = read_split(splits, trial, index.frame)
    train_mask = split.is_labeled & ~split.is_test
    if not train_mask.any():
        raise UserError(f"{splits}: trial {trial} has no labelled training frame")
    if not world.is_main:
        distributed.barrier(world)  # the main process downloads the weights first, alone
    init, info = vgg.initial_weights(config.weights, url=config.weights_url,
                                     sha256=config.weights_sha256, cache_dir=cache_dir)
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if prepare is not None:
            prepare()
        distributed.barrier(world)  # no process reads a state that `prepare` deletes
    settings = _settings(config, info, trial=trial, modality=modality,
                         categories=list(index.categories),
                         data=_fingerprint(index.frame, index.label, train_mask))
    done = _finished(out, settings, config.epochs)
    if done is not None:
        return done
    torch.manual_seed(config.seed)  # random initialisation (weights: none, and the last layer)
    model = vgg.build_vgg16(len(index.categories), init,
                            source=f"finetune.weights {config.weights}")
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    opt = engine.adam(model, config.lr)
    with open_images(images) as f:
        labeled = _load_labeled(f, modality, train_mask, device, config.batch_size)
        labels = torch.from_numpy(index.label[train_mask])
        net = model if not world.distributed else DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None)
        history = engine.train(
            model, opt, lambda epoch: _train_epoch(net, opt, labeled, labels, config=config,
                                                   epoch=epoch, device=device, world=world),
            epochs=config.epochs,
            checkpoint=engine.Checkpoint(out / "state.pt", settings, config.checkpoint_every),
            curves=out / "live", hint="lower finetune.lr or use finetune.precision: fp32",
            desc=f"finetune {modality} trial {trial}", world=world)
        if not world.is_main:
            return {}
        accuracy = evaluate(model, f, modality, split.is_test, index.label,
                            image_size=config.image_size, batch_size=config.batch_size,
                            device=device, precision=config.precision)
    # finetune.epochs: 0 keeps the initial weights (no epoch, no training loss)
    last = history[-1] if history else {}
    return _finish(model, out, settings, config, split, last, accuracy, device)


def _finish(model: nn.Module, out: Path, settings: dict[str, Any], config: FinetuneConfig,
            split: TrialSplit, last: dict[str, float], accuracy: float,
            device: torch.device) -> dict[str, Any]:
    meta = {**settings, **_extra_meta(config.epochs)}
    # Stored in bfloat16, the precision extract's GPU path (bf16 autocast) computes in: half
    # the disk (268 MB, not 537, per network); `vgg.load_vgg16` widens it to float32 again.
    weights = {k: (v.detach().cpu().to(torch.bfloat16) if v.is_floating_point()
                   else v.detach().cpu()).contiguous() for k, v in model.state_dict().items()}
    torch_save({"meta": meta, "state_dict": weights}, out / "model.pt")
    (out / "state.pt").unlink(missing_ok=True)  # the final weights make it redundant
    metrics = {"trial": settings["trial"], "modality": settings["modality"],
               "test_accuracy": accuracy, "n_test": int(split.is_test.sum()),
               "n_labeled": int((split.is_labeled & ~split.is_test).sum()),
               "epochs": config.epochs, "device": device.type,
               **{f"train_{name}": value for name, value in last.items()}}
    write_json(out / "metrics.json", metrics, sort_keys=True)
    return metrics
