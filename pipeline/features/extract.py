"""fc1 features of every frame of a trial, both modalities, into `ssmvae-features/1`.

fc1 is torchvision's `classifier[:2]`: the first 4096-d Linear layer and its ReLU, so every
feature is >= 0 (the paper's x, w in R_{>0}^4096). Frames are streamed from the images file
in batches under `torch.inference_mode`, and written block by block into a chunked file
under a temporary name that is renamed when complete (`store.FeaturesWriter`).

Keeping a GPU busy: a `DataLoader` over row ranges reads image blocks in `extract.workers`
processes (each opens the HDF5 file itself), pinned for asynchronous copies, a few batches
ahead. Workers hand over uint8 pixels on CUDA, where the GPU normalises them in microseconds
and a float32 batch would be four times the host-to-device traffic; on CPU they hand over
the normalised float batch, so that work leaves the main process. The main process runs both
networks on each batch and copies the features back asynchronously; it writes a batch while
the GPU already computes the next one. Rows are always written in file order, and every
batch holds the same frames whatever the number of workers, so the file does not depend on
it (tested byte for byte on CPU).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline.config import ExtractConfig
from pipeline.devices import autocast_dtype, resolve_device
from pipeline.digest import file_sha256
from pipeline.errors import UserError
from pipeline.features import vgg
from pipeline.store import FeaturesWriter, StoreError, TrialSplit, read_images_index, read_split

log = logging.getLogger(__name__)
GiB = 1 << 30
# A reader that sends nothing for this long is stuck (a hung network file system, say):
# stop with an error rather than wait for ever. One block takes milliseconds to read.
READ_TIMEOUT_S = 300.0


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
    return model.eval(), meta, file_sha256(path)


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
             "precision": "bf16" if autocast_dtype(config.precision, device) else "fp32"}
    attrs.update({f"checkpoint_sha256_{m}": h for m, h in hashes.items()})
    return attrs


def auto_batch_size(device: torch.device) -> int:
    """`extract.batch_size: 0`: frames per forward pass, sized to the device.

    At 148 px VGG16's activations under bf16 take about 6 MB per image at their peak, so 256
    frames fit beside the two networks on any GPU of 16 GB or more; 256 is large enough to
    keep an H100's convolutions efficient, and smaller cards get a margin for other jobs.
    On CPU a larger batch is no faster and 64 keeps the features identical to earlier runs.
    """
    if device.type != "cuda":
        return 64
    total = torch.cuda.get_device_properties(device).total_memory
    return 256 if total >= 40 * GiB else 128 if total >= 16 * GiB else 64


def auto_workers(device: torch.device) -> int:
    """`extract.workers: -1`: reader processes for the device.

    On CUDA, one per available core up to 8: a process reads a few hundred MB/s of HDF5,
    and the GPU consumes the ~5.5 GB of the evaluation subset in seconds. On CPU none: the
    network takes ~0.2 s per image there, reading a block takes milliseconds, and a worker
    would only take a core from the network.
    """
    if device.type != "cuda":
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


class Block(NamedTuple):
    """Frames [start, stop) of every modality, or why they could not be read.

    A NamedTuple, so the loader pins its tensors; a read error travels as text rather than
    as an exception, which the loader would wrap in its own multi-line message.
    """

    start: int
    stop: int
    images: dict[str, torch.Tensor]
    error: str = ""


class ImageBlocks(Dataset[Block]):
    """Consecutive row ranges of an images file, read (and on CPU normalised) on demand.

    Holds only the file's path: each process opens its own handle on first use, because an
    h5py handle must not cross a fork and cannot be pickled to a worker.
    """

    def __init__(self, path: str | Path, modalities: list[str], *, n: int, batch_size: int,
                 image_size: int, convert: bool) -> None:
        self.path = Path(path)
        self.modalities = modalities
        self.ranges = [(a, min(n, a + batch_size)) for a in range(0, n, batch_size)]
        self.image_size = image_size
        self.convert = convert  # normalise here (CPU) or leave uint8 for the device
        self._file: h5py.File | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.ranges)

    def __getitem__(self, i: int) -> Block:
        start, stop = self.ranges[i]
        try:
            if self._file is None or self._pid != os.getpid():
                self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
            raw = {m: self._file[m][start:stop] for m in self.modalities}
        except (OSError, KeyError) as err:  # h5py's errors for unreadable files and data
            return Block(start, stop, {}, f"{self.path}: cannot read frames {start} to "
                                          f"{stop - 1} ({err})")
        images = {m: torch.from_numpy(block) for m, block in raw.items()}
        if self.convert:
            cpu = torch.device("cpu")
            images = {m: vgg.to_input(x, self.image_size, cpu) for m, x in images.items()}
        return Block(start, stop, images)

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_pid": -1}


def _read(blocks: Iterator[Block], path: Path, workers: int) -> Iterator[Block]:
    """The loader's blocks, with its failures turned into one-line errors naming the file."""
    while True:
        try:
            block = next(blocks)
        except StopIteration:
            return
        except RuntimeError as err:  # a worker killed (out of memory) or timed out
            raise StoreError(f"{path}: reading images in {workers} worker processes failed "
                             f"({err}); try extract.workers: 0") from err
        if block.error:
            raise StoreError(block.error)
        yield block


def _fc1(net: nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        return net(x).float()


@torch.inference_mode()
def features_of(model: nn.Module, images: np.ndarray, *, image_size: int,
                device: torch.device, dtype: torch.dtype | None) -> np.ndarray:
    """fc1 (after ReLU) of a uint8 [B, S, S, 3] batch, as float32 [B, 4096]."""
    batch = torch.from_numpy(images)
    if device.type == "cuda":
        batch = batch.pin_memory()  # lets the copy to the GPU run asynchronously
    x = vgg.to_input(batch, image_size, device)
    return _fc1(vgg.Fc1(model), x, dtype).cpu().numpy()


def iter_features(images: str | Path, nets: Mapping[str, nn.Module], *, n: int,
                  image_size: int, batch_size: int, workers: int, device: torch.device,
                  dtype: torch.dtype | None) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """Yield (start, stop, {modality: float32 [stop - start, 4096]}) for rows [0, n), in order.

    `nets` map a normalised batch to its fc1 features (`vgg.Fc1`). The reader processes are
    started by this call, before the caller opens any file for writing, so that no open
    HDF5 file is copied into them. On CUDA a batch is yielded only once the next one is
    queued on the GPU, so the caller's writing overlaps the device's work.
    """
    path = Path(images)
    cuda = device.type == "cuda"
    dataset = ImageBlocks(path, list(nets), n=n, batch_size=batch_size, image_size=image_size,
                          convert=not cuda)
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                        pin_memory=cuda, timeout=READ_TIMEOUT_S if workers else 0,
                        prefetch_factor=2 if workers else None)
    blocks = _read(iter(loader), path, workers)  # iter() forks the workers
    return _pipelined(blocks, dataset, nets, image_size=image_size, device=device, dtype=dtype)


def _pipelined(blocks: Iterator[Block], dataset: ImageBlocks, nets: Mapping[str, nn.Module], *,
               image_size: int, device: torch.device, dtype: torch.dtype | None
               ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    pending: tuple[int, int, dict[str, torch.Tensor], torch.cuda.Event | None] | None = None
    try:
        for block in blocks:
            out = {}
            with torch.inference_mode():  # not across the yield: the caller's code is its own
                for m, net in nets.items():
                    x = block.images[m]
                    if x.dtype == torch.uint8:  # CUDA: normalised on the device
                        x = vgg.to_input(x, image_size, device)
                    # non_blocking from CUDA lands in pinned memory, valid once `done` is
                    # reached; on CPU it is the tensor itself
                    out[m] = _fc1(net, x, dtype).to("cpu", non_blocking=True)
            done = None
            if device.type == "cuda":
                done = torch.cuda.Event()
                done.record(torch.cuda.current_stream(device))  # cuda:N may not be current
            if pending is not None:
                yield _ready(*pending)
            pending = (block.start, block.stop, out, done)
            if done is None:  # CPU: computed already, nothing to overlap
                yield _ready(*pending)
                pending = None
        if pending is not None:
            yield _ready(*pending)
    finally:
        dataset.close()  # the main process's handle when workers == 0


def _ready(start: int, stop: int, out: dict[str, torch.Tensor],
           done: torch.cuda.Event | None) -> tuple[int, int, dict[str, np.ndarray]]:
    if done is not None:
        done.synchronize()
    return start, stop, {m: h.numpy() for m, h in out.items()}


SLOW_S = 3600.0  # a stage expected to run longer than this says so at its start


def warn_if_slow(what: str, done: int, total: int, seconds: float) -> None:
    """After the first `done` of `total` items took `seconds`: one warning line with the
    estimated time of the whole, when it exceeds an hour (extract on a CPU at the paper's
    size: hours per trial, where a GPU takes minutes)."""
    estimate = seconds * total / max(done, 1)
    if estimate > SLOW_S:
        log.warning("%s: about %.1f h for %d frames at %.1f frames/s (the first %d); a CUDA "
                    "GPU takes minutes", what, estimate / 3600, total, done / seconds, done)


def extract_features(*, images: str | Path, splits: str | Path, trial: int,
                     checkpoints: Mapping[str, str | Path], out: str | Path,
                     config: ExtractConfig) -> dict[str, Any]:
    """Write `out` for every frame of `trial`; return its provenance attributes."""
    device = resolve_device(config.device)
    dtype = autocast_dtype(config.precision, device)
    batch_size = config.batch_size or auto_batch_size(device)
    workers = auto_workers(device) if config.workers < 0 else config.workers
    index = read_images_index(images)
    split = read_split(splits, trial, index.frame)
    nets, metas, hashes = {}, {}, {}
    for modality, path in checkpoints.items():
        model, metas[modality], hashes[modality] = load_checkpoint(
            path, trial=trial, modality=modality, categories=index.categories)
        model.to(device)
        if device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        nets[modality] = vgg.Fc1(model)
    attrs = _provenance(metas, hashes, split, config, device)
    n, size = len(index), attrs["image_size"]
    log.info("extract trial %d on %s: batch %d, %d reader processes", trial, device,
             batch_size, workers)
    features = iter_features(images, nets, n=n, image_size=size, batch_size=batch_size,
                             workers=workers, device=device, dtype=dtype)
    with FeaturesWriter(out, n=n, dims=dict.fromkeys(nets, vgg.FC1_DIM),
                        categories=index.categories, attrs=attrs) as writer, \
            tqdm(total=n, unit="frame", desc=f"extract trial {trial}", mininterval=1.0) as bar:
        began = time.perf_counter()
        for start, stop, feats in features:
            writer.write(start, features=feats, label=index.label[start:stop],
                         is_test=split.is_test[start:stop],
                         is_labeled=split.is_labeled[start:stop], frame=index.frame[start:stop])
            bar.update(stop - start)
            if start == 0:
                warn_if_slow(f"extract trial {trial} on {device}", stop, n,
                             time.perf_counter() - began)
    log.info("%s: %d frames, %s x %d features", out, n, "+".join(nets), vgg.FC1_DIM)
    return attrs
