"""torchvision's VGG16 with its initial weights, and what both VGG stages share.

Initial weights are one of three things, always recorded with their identity and sha256 so
every checkpoint and features file can be traced to them:

- `imagenet`: torchvision's `VGG16_Weights.IMAGENET1K_V1` file, downloaded once into a cache
  directory and hash-checked (like torchvision, against the hex prefix in its file name by
  default; a full 64-digit sha256 may be configured instead);
- a path to a local copy of a torchvision VGG16 state dict (clusters without network); it is
  checked against the same hash unless the configured hash is empty;
- `none`: random initialisation from the seed (the demo profile and tests).

The architecture is torchvision's, unchanged except the last layer (one output per
category). At 148 px the conv maps are 4x4 and the adaptive pooling stretches them to 7x7,
which keeps fc1's 25088 inputs and so the ImageNet weights usable.
"""

from __future__ import annotations

import functools
import urllib.error
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import VGG16_Weights, vgg16

from pipeline.digest import file_sha256
from pipeline.errors import UserError

IMAGENET = VGG16_Weights.IMAGENET1K_V1
_TRANSFORM = IMAGENET.transforms()
# The normalisation torchvision's ImageNet weights expect (its resize/crop to 224 is not
# used: the paper feeds 148 px images, which the adaptive pooling accommodates).
MEAN: tuple[float, ...] = tuple(_TRANSFORM.mean)
STD: tuple[float, ...] = tuple(_TRANSFORM.std)
LAYER = "classifier[:2] (fc1 after ReLU)"
FC1_DIM = 4096
_LAST = "classifier.6."  # the replaced layer: never loaded from the initial weights


class WeightsError(UserError):
    """Initial weights are missing, unreadable, of the wrong shape or fail their hash."""


@dataclass(frozen=True)
class WeightsInfo:
    """Where a network's initial weights came from (written into checkpoints and features)."""

    identity: str  # "torchvision:VGG16_Weights.IMAGENET1K_V1", "file:NAME" or "none"
    sha256: str  # of the weights file; "" for random initialisation


def _hash_ok(actual: str, expected: str) -> bool:
    return expected == "" or actual.startswith(expected.lower())


def fetch_imagenet(url: str, sha256: str, cache_dir: str | Path) -> Path:
    """Return the cached weights file, downloading it once; a bad hash is never kept."""
    cache_dir = Path(cache_dir)
    name = Path(urllib.parse.urlparse(url).path).name or "vgg16.pth"
    path = cache_dir / name
    if path.is_file() and _hash_ok(file_sha256(path), sha256):
        return path
    path.unlink(missing_ok=True)  # absent or corrupt: fetch a fresh copy
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        # Writes to a temporary file in cache_dir and renames it: a kill leaves no half file.
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise WeightsError(f"finetune.weights_url {url}: download failed ({err}); on a machine "
                           "without network set finetune.weights to a local copy") from err
    actual = file_sha256(path)
    if not _hash_ok(actual, sha256):
        path.unlink(missing_ok=True)
        raise WeightsError(f"finetune.weights_url {url}: downloaded file has sha256 {actual}, "
                           f"expected {sha256} (finetune.weights_sha256)")
    return path


def initial_weights(weights: str, *, url: str, sha256: str,
                    cache_dir: str | Path) -> tuple[dict[str, torch.Tensor] | None, WeightsInfo]:
    """Resolve `finetune.weights` to a state dict (None: random init) and its identity."""
    if weights == "none":
        return None, WeightsInfo("none", "")
    if weights == "imagenet":
        path = fetch_imagenet(url, sha256, cache_dir)
        identity = f"torchvision:VGG16_Weights.{IMAGENET.name}"
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"finetune.weights: file {path} not found (expected 'imagenet', "
                               "'none' or a path to a VGG16 state dict)")
        identity = f"file:{path.name}"
    actual = file_sha256(path)
    if not _hash_ok(actual, sha256):
        raise WeightsError(f"finetune.weights {path}: sha256 {actual} does not match "
                           f"finetune.weights_sha256 {sha256!r} (set it to '' to skip the check)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a non-checkpoint file
        raise WeightsError(f"finetune.weights {path}: not a PyTorch state dict ({err})") from err
    if not isinstance(state, dict):
        raise WeightsError(f"finetune.weights {path}: expected a state dict, "
                           f"got {type(state).__name__}")
    return state, WeightsInfo(identity, actual)


def build_vgg16(num_classes: int, state: dict[str, torch.Tensor] | None = None,
                *, source: str = "weights") -> nn.Module:
    """torchvision's VGG16 with `num_classes` outputs; `state` fills every other layer."""
    if num_classes < 2:
        raise ValueError(f"expected at least 2 categories, got {num_classes}")
    if state is None:
        return vgg16(weights=None, num_classes=num_classes)
    with torch.device("meta"):  # shapes only: validate before the costly initialisation
        own = vgg16(weights=None, num_classes=num_classes).state_dict()
    wanted = {k for k in own if not k.startswith(_LAST)}
    given = {k for k in state if not k.startswith(_LAST)}
    if wanted != given:
        missing, extra = sorted(wanted - given), sorted(given - wanted)
        raise WeightsError(f"{source}: not a torchvision VGG16 state dict (missing "
                           f"{missing[:3]}, unexpected {extra[:3]})")
    for key in sorted(wanted):
        if tuple(state[key].shape) != tuple(own[key].shape):
            raise WeightsError(f"{source}: {key} has shape {tuple(state[key].shape)}, "
                               f"expected {tuple(own[key].shape)}")
    model = vgg16(weights=None, num_classes=num_classes)
    model.load_state_dict({k: state[k] for k in wanted}, strict=False)
    return model


def load_vgg16(num_classes: int, weights: dict[str, torch.Tensor]) -> nn.Module:
    """A fine-tuned VGG16 from its complete state dict, skipping the random initialisation
    (seconds for 138M parameters) that `load_state_dict` would overwrite anyway."""
    with torch.device("meta"):
        model = vgg16(weights=None, num_classes=num_classes)
    # model.pt holds bfloat16 (finetune's `_finish`): computed in float32 unless autocast
    weights = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    model.load_state_dict(weights, assign=True)
    return model


@functools.cache
def _normalization(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std as [1, 3, 1, 1] tensors on `device`, made once per device:
    building them per batch is a blocking host-to-GPU copy that would stall the queue of
    asynchronous work every batch. Made outside inference mode, so that the cached tensors
    serve training as well."""
    with torch.inference_mode(False):
        mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    return mean, std


def to_input(images: torch.Tensor, image_size: int, device: torch.device) -> torch.Tensor:
    """uint8 [B, S, S, 3] RGB -> normalised float [B, 3, size, size] on `device`.

    Images of another size are resized bilinearly (antialiased), the same way in both stages.
    """
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear",
                          align_corners=False, antialias=True)
    mean, std = _normalization(device)
    x = (x - mean) / std
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def fc1(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The first fully connected layer after its ReLU: torchvision's `classifier[:2]`."""
    h = torch.flatten(model.avgpool(model.features(x)), 1)
    return model.classifier[:2](h)


class Fc1(nn.Module):
    """`fc1` as a module of its own, so it can be handed to `torch.compile` as one graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fc1(self.model, x)
