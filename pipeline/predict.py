"""Classify new RGB-D frames with a trained model folder (`python -m pipeline predict`).

The chain is the pipeline's own, piece by piece: `images.process_file` (the preprocess
stage's crop-to-square and jet colouring, at the size the trial's images had), the trial's
fine-tuned VGG16 per given modality and its fc1 (`extract.features_of`, the extract stage's
normalisation), then the model saved by `train` (`vae/saved.py`: its feature scaling and
`evaluate.predict`, the function behind `metrics.json`). So the test frames of a trial give
the predictions `metrics.json` counted.

Where the VGG16 networks are: the model folder records the features file's provenance
(trial, image size, each checkpoint's sha256); the checkpoints are looked up at
`models/vgg16/trial-K-MODALITY/model.pt` beside the model folder's `models/vae` (or under
`--vgg16 DIR`) and must have the recorded sha256.

Inputs: one file per modality (any names), or folders paired by the dataset's naming
(`NAME_crop.png` with `NAME_depthcrop.png`). A file that cannot be used (unreadable, depth
not 16-bit, without its partner) is listed with its reason, and so is every other file of
its frame, which is not used: a frame given as RGB + depth is predicted from both or not at
all (never silently from one, by another method than the one the result names); the other
frames are predicted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline import atomic
from pipeline.devices import autocast_dtype
from pipeline.errors import UserError
from pipeline.features.extract import CheckpointError, features_of, load_checkpoint
from pipeline.images import FrameError, process_file
from pipeline.rgbd.layout import parse_name
from pipeline.vae import Evaluation
from pipeline.vae.saved import Classifier, SavedModelError, choose, load_trained

MODALITIES = ("rgb", "depth")
SUFFIX = {"rgb": "_crop.png", "depth": "_depthcrop.png"}


@dataclass(frozen=True)
class FrameFiles:
    name: str  # the dataset's frame id (`apple_1_1_1`) or the file's name
    files: dict[str, Path]  # modality -> file


@dataclass(frozen=True)
class Prediction:
    name: str
    files: dict[str, Path]
    category: str  # the class evaluate.predict picks
    top: list[tuple[str, float]]  # (category, probability), most probable first


@dataclass
class Result:
    model: str
    input: str  # "rgb", "depth", "rgb+depth"
    method: str
    predictions: list[Prediction] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "input": self.input, "method": self.method,
                "predictions": [{"frame": p.name,
                                 "files": {m: str(f) for m, f in p.files.items()},
                                 "category": p.category,
                                 "top": [{"category": c, "probability": q} for c, q in p.top]}
                                for p in self.predictions],
                "errors": [{"file": f, "error": e} for f, e in self.errors]}


# --------------------------------------------------------------------------- inputs


def collect(rgb: str | Path | None, depth: str | Path | None
            ) -> tuple[list[FrameFiles], list[tuple[str, str]]]:
    """The frames to classify, in the dataset's order, and the files that cannot be paired."""
    given = {m: Path(p) for m, p in (("rgb", rgb), ("depth", depth)) if p is not None}
    if not given:
        raise UserError("give --rgb, --depth or both")
    for m, path in given.items():
        if not path.exists():
            raise UserError(f"--{m} {path}: not found")
    folders = {m for m, path in given.items() if path.is_dir()}
    if not folders:
        name = _frame_name(next(iter(given.values())))
        return [FrameFiles(name, given)], []
    if len(folders) != len(given):
        raise UserError("--rgb and --depth: give two files or two folders, not one of each")
    return _pair(given)


def _pair(folders: dict[str, Path]) -> tuple[list[FrameFiles], list[tuple[str, str]]]:
    found: dict[str, dict[str, Path]] = {}
    errors: list[tuple[str, str]] = []
    for m, folder in folders.items():
        files = sorted(folder.rglob(f"*{SUFFIX[m]}"))
        if not files:
            raise UserError(f"--{m} {folder}: no *{SUFFIX[m]} files in it")
        for path in files:
            key = path.name[:-len(SUFFIX[m])]
            if m in found.setdefault(key, {}):
                errors.append((str(path), f"a second {m} file of frame {key} (the first is "
                                          f"{found[key][m]})"))
                continue
            found[key][m] = path
    frames = []
    for key in sorted(found, key=_order):
        files = found[key]
        absent = [m for m in folders if m not in files]
        if absent:
            for path in files.values():
                errors.append((str(path), f"unpaired: no {key}{SUFFIX[absent[0]]} in "
                                          f"{folders[absent[0]]}"))
            continue
        frames.append(FrameFiles(key, files))
    return frames, errors


def _frame_name(path: Path) -> str:
    for suffix in SUFFIX.values():
        if path.name.endswith(suffix) and parse_name(path.name) is not None:
            return path.name[:-len(suffix)]
    return path.name


def _order(key: str) -> tuple:
    """The dataset's order (category, instance, video, frame): that of a features file."""
    parsed = parse_name(f"{key}_crop.png")
    if parsed is None:
        return (1, key)
    return (0, parsed.category, parsed.instance_number, parsed.video, parsed.index)


# --------------------------------------------------------------------------- the networks


@dataclass
class Predictor:
    classifier: Classifier
    nets: dict[str, nn.Module]  # modality -> fine-tuned VGG16 (eval mode, on `device`)
    preprocess_size: int  # the size the preprocess stage gave the trial's images
    image_size: int  # VGG16's input size (fine-tuning's image_size)
    device: torch.device
    dtype: torch.dtype | None  # VGG16's autocast: extract's (its features' precision attribute)


def load_predictor(model_dir: str | Path, modalities: Sequence[str], *,
                   vgg16_dir: str | Path | None = None, device: torch.device | None = None,
                   classifier: Classifier | None = None) -> Predictor:
    """The model folder's classifier (unless given, loaded already) and the fine-tuned
    VGG16 of each of `modalities`."""
    device = device or torch.device("cpu")
    model_dir = Path(model_dir)
    classifier = classifier or load_trained(model_dir, device)
    attrs = classifier.provenance.get("attrs") or {}
    config = classifier.provenance.get("config") or {}
    if "trial" not in attrs or "image_size" not in attrs:
        raise SavedModelError(f"{model_dir / 'model.pt'}: its features "
                              f"({classifier.provenance.get('features')}) were not made by the "
                              "extract stage, so there are no VGG16 networks to apply to images")
    nets = {m: _vgg16(model_dir, classifier, attrs, m, vgg16_dir, device) for m in modalities}
    size = int((config.get("preprocess") or {}).get("size", attrs["image_size"]))
    # VGG16 computes in the precision extract recorded (features computed in bf16 are
    # recomputed in fp32 where bf16 is emulated: within 0.7 %, and many times faster)
    precision = "fp32" if attrs.get("precision") == "fp32" else "auto"
    return Predictor(classifier, nets, size, int(attrs["image_size"]), device,
                     autocast_dtype(precision, device))


def _vgg16(model_dir: Path, classifier: Classifier, attrs: dict[str, Any], modality: str,
           vgg16_dir: str | Path | None, device: torch.device) -> nn.Module:
    trial = int(attrs["trial"])
    name = Path(f"trial-{trial}-{modality}") / "model.pt"
    if vgg16_dir is not None:
        candidates = [Path(vgg16_dir)]
    else:  # models/vae/NAME/trial-K -> models/vgg16; then the working directory's
        parents = model_dir.resolve().parents
        candidates = ([parents[2] / "vgg16"] if len(parents) > 2 else []) + [Path("models/vgg16")]
    path = next((c / name for c in candidates if (c / name).is_file()), candidates[0] / name)
    net, _, sha = load_checkpoint(path, trial=trial, modality=modality,
                                  categories=classifier.categories)
    expected = attrs.get(f"checkpoint_sha256_{modality}")
    if sha != expected:
        raise CheckpointError(f"{path}: sha256 {sha[:12]}... is not that of the checkpoint the "
                              f"model's features were extracted with ({str(expected)[:12]}...); "
                              "re-run `dvc repro` so that they match")
    net.to(device)
    if device.type == "cuda":
        net.to(memory_format=torch.channels_last)
    return net


# --------------------------------------------------------------------------- prediction


def predict_frames(predictor: Predictor, frames: Sequence[FrameFiles], evaluation: Evaluation,
                   *, top: int = 5, batch_size: int = 64,
                   progress: bool = False) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Predictions for the frames that can be read, and (file, reason) for the others; a
    frame's prediction does not depend on the other frames or the batch size."""
    predictions: list[Prediction] = []
    errors: list[tuple[str, str]] = []
    with tqdm(total=len(frames), unit="frame", desc="predict", disable=not progress,
              mininterval=1.0) as bar:
        for chunk in _chunks(frames, batch_size):
            rows = _features(predictor, chunk, evaluation.inputs, errors)
            if rows:
                predictions += _classify(predictor, rows, evaluation, top)
            bar.update(len(chunk))
    return predictions, errors


def _chunks(frames: Sequence[FrameFiles], size: int) -> Iterator[Sequence[FrameFiles]]:
    for start in range(0, len(frames), size):
        yield frames[start:start + size]


def _features(predictor: Predictor, chunk: Sequence[FrameFiles], inputs: Sequence[str],
              errors: list[tuple[str, str]]) -> list[tuple[FrameFiles, dict[str, np.ndarray]]]:
    """Decode and preprocess a chunk of frames, then fc1 of the readable ones, per modality."""
    readable, images = [], []
    for frame in chunk:
        image, refused = {}, []
        for m in inputs:
            try:
                image[m] = _image(frame.files[m], m, predictor.preprocess_size)
            except _FileError as err:
                refused.append(err)
        if not refused:
            images.append(image)
            readable.append(frame)
            continue
        errors += [(str(err.path), err.reason) for err in refused]
        bad = ", ".join(str(err.path) for err in refused)
        errors += [(str(frame.files[m]), f"not used: frame {frame.name} cannot be predicted "
                                         f"from {'+'.join(inputs)} ({bad} was refused)")
                   for m in image]
    if not readable:
        return []
    fc1 = {m: features_of(predictor.nets[m], np.stack([i[m] for i in images]),
                          image_size=predictor.image_size, device=predictor.device,
                          dtype=predictor.dtype) for m in inputs}
    return [(frame, {m: fc1[m][i] for m in inputs}) for i, frame in enumerate(readable)]


class _FileError(Exception):
    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _image(path: Path, modality: str, size: int) -> np.ndarray:
    try:
        return process_file(path, modality, size)
    except FrameError as err:
        raise _FileError(path, str(err)) from err
    except Exception as err:  # OpenCV's own errors for odd files (e.g. a 0-pixel image)
        raise _FileError(path, f"cannot be used as {modality} ({type(err).__name__}: "
                               f"{err})") from err


def _classify(predictor: Predictor, rows: list[tuple[FrameFiles, dict[str, np.ndarray]]],
              evaluation: Evaluation, top: int) -> list[Prediction]:
    x = {m: np.stack([f[m] for _, f in rows]) for m in evaluation.inputs}
    classes, probs = predictor.classifier.classify(x, evaluation)
    categories = predictor.classifier.categories
    out = []
    for (frame, _), cls, p in zip(rows, classes, probs, strict=True):
        best = np.argsort(-p, kind="stable")[:top]
        out.append(Prediction(frame.name, frame.files, categories[int(cls)],
                              [(categories[int(k)], round(float(p[k]), 6)) for k in best]))
    return out


def run(model_dir: str | Path, *, rgb: str | Path | None = None,
        depth: str | Path | None = None, top: int = 5, method: str | None = None,
        vgg16_dir: str | Path | None = None, device: torch.device | None = None,
        batch_size: int = 64, progress: bool = False) -> Result:
    """Collect the inputs, load the networks, predict: what the command does before printing."""
    if top < 1:
        raise UserError(f"--top {top}: expected at least 1")
    frames, errors = collect(rgb, depth)
    inputs = tuple(m for m, path in zip(MODALITIES, (rgb, depth), strict=True) if path)
    classifier = load_trained(model_dir, device)  # checked before the VGG16 networks load
    evaluation = choose(classifier, inputs, method)
    predictor = load_predictor(model_dir, inputs, vgg16_dir=vgg16_dir, device=device,
                               classifier=classifier)
    predictions, bad = predict_frames(predictor, frames, evaluation, top=top,
                                      batch_size=batch_size, progress=progress)
    return Result(model=str(model_dir), input=evaluation.key, method=evaluation.method,
                  predictions=predictions, errors=errors + bad)


def table(result: Result) -> str:
    """One line per frame: the frame, then the top categories with their probabilities."""
    width = max([len(p.name) for p in result.predictions] + [5])
    lines = [f"{'frame':<{width}}  top categories ({result.input}, {result.method})"]
    for p in result.predictions:
        lines.append(f"{p.name:<{width}}  " + "  ".join(f"{c} {q:.3f}" for c, q in p.top))
    return "\n".join(lines)


def write_json(result: Result, path: str | Path) -> None:
    atomic.write_json(path, result.to_dict())
