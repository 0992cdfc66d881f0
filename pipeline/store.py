"""The project's HDF5 files, in one place: schemas, writers, readers, validators.

Every file carries `attrs["schema"]` (`name/version`), is written under a temporary name and
renamed when complete (a killed stage never leaves a file that looks whole), and holds no
timestamps (`track_times=False`), so identical data gives identical bytes for DVC.

- `ssmvae-features/1`: per-modality features, labels and the trial's masks; the contract
  between feature extraction and the generative models (see docs/architecture.md).
- `ssmvae-images/1`: the preprocessed 148x148 RGB and jet-coloured depth crops.
- `ssmvae-splits/1`: per trial, which frames are held out and which training frames are
  labelled, aligned row by row with the images file.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np

from pipeline.atomic import atomic_path
from pipeline.errors import UserError

FEATURES_SCHEMA = "ssmvae-features/1"
IMAGES_SCHEMA = "ssmvae-images/1"
SPLITS_SCHEMA = "ssmvae-splits/1"

_STR = h5py.string_dtype(encoding="utf-8")
_CHECK_ROWS = 4096  # rows read at once when scanning a large dataset for NaN/inf


class StoreError(UserError):
    """A file does not hold what its schema promises; the message names the file."""


_F = TypeVar("_F", bound=Callable[..., Any])


def _reader(function: _F) -> _F:
    """Turn h5py's errors on a damaged file (half-written, overwritten) into a `StoreError`.

    h5py reports broken metadata as `OSError`, `KeyError` or `RuntimeError` from whichever
    access first meets it; the readers' first argument is always the file's path.
    """
    @functools.wraps(function)
    def wrapper(path: str | Path, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(path, *args, **kwargs)
        except (OSError, KeyError, RuntimeError) as err:
            raise StoreError(f"{path}: damaged or half-written HDF5 file ({err}); run the "
                             "stage that writes it again") from err
    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def atomic_h5(path: str | Path) -> Iterator[h5py.File]:
    """Open `path` for writing under a temporary name; rename it into place on success.

    On any exception the partial file is removed and an existing file at `path` is kept.
    """
    with atomic_path(path) as tmp, h5py.File(tmp, "w", track_order=True) as f:
        yield f


def _dataset(f: h5py.Group, name: str, data: Any, **kwargs: Any) -> h5py.Dataset:
    return f.create_dataset(name, data=data, track_times=False, **kwargs)


def _strings(values: Sequence[str] | np.ndarray) -> np.ndarray:
    return np.asarray([str(v) for v in values], dtype=object)


def _read_strings(ds: h5py.Dataset, path: Path | str) -> np.ndarray:
    if h5py.check_string_dtype(ds.dtype) is None:
        raise StoreError(f"{path}: dataset {ds.name.lstrip('/')!r} must hold strings, "
                         f"got {ds.dtype}")
    return np.asarray(ds.asstr()[()], dtype=object)


def _check_dtype(path: Path | str, name: str, ds: h5py.Dataset, kind: type) -> None:
    """`kind` is np.integer or np.bool_; a float label must never be silently truncated."""
    if not np.issubdtype(ds.dtype, kind):
        expected = "integer" if kind is np.integer else "bool"
        raise StoreError(f"{path}: dataset {name!r} must be {expected}, got {ds.dtype}")


def _attr_list(value: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(value)]


def _open(path: str | Path, schema: str) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise StoreError(f"{path}: not a readable HDF5 file ({err})") from err
    found = f.attrs.get("schema")
    if isinstance(found, bytes):
        found = found.decode()
    if found != schema:
        f.close()
        raise StoreError(f"{path}: expected schema {schema!r}, found {found!r}")
    return f


def _require(f: h5py.File, name: str, path: Path | str) -> h5py.Dataset:
    if name not in f:
        raise StoreError(f"{path}: missing dataset {name!r}")
    return f[name]


def _check_length(path: Path | str, name: str, ds: h5py.Dataset, n: int) -> None:
    if ds.shape[0] != n:
        raise StoreError(f"{path}: dataset {name!r} has {ds.shape[0]} rows, expected {n} "
                         "(the length of /label)")


def _check_finite(path: Path | str, name: str, ds: h5py.Dataset) -> None:
    for start in range(0, ds.shape[0], _CHECK_ROWS):
        block = ds[start:start + _CHECK_ROWS]
        bad = ~np.isfinite(block)
        if bad.any():
            row = start + int(np.argwhere(bad)[0][0])
            raise StoreError(f"{path}: dataset {name!r} holds NaN or inf (first at row {row})")


# --------------------------------------------------------------------------- features


@dataclass(frozen=True)
class FeatureSet:
    """A features file read into memory: one array per modality, aligned by row."""

    features: dict[str, np.ndarray]
    label: np.ndarray
    is_test: np.ndarray
    is_labeled: np.ndarray
    categories: list[str]
    frame: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        return list(self.features)

    def __len__(self) -> int:
        return int(self.label.shape[0])


def write_features(path: str | Path, data: FeatureSet) -> None:
    """Write a whole `FeatureSet` (small data; extraction streams through `FeaturesWriter`)."""
    dims = {m: int(x.shape[1]) for m, x in data.features.items()}
    with FeaturesWriter(path, n=len(data), dims=dims, categories=data.categories,
                        attrs=data.attrs, with_frame=data.frame is not None) as writer:
        writer.write(0, features=data.features, label=data.label, is_test=data.is_test,
                     is_labeled=data.is_labeled, frame=data.frame)
    validate_features(path)


class FeaturesWriter:
    """Fill an `ssmvae-features/1` file block by block; renamed into place on `close`."""

    def __init__(self, path: str | Path, *, n: int, dims: Mapping[str, int],
                 categories: Sequence[str], attrs: Mapping[str, Any] | None = None,
                 with_frame: bool = True, chunk_rows: int = 256) -> None:
        if not dims:
            raise ValueError("expected at least one modality, got none")
        self.path = Path(path)
        self._ctx = atomic_h5(self.path)
        f = self._ctx.__enter__()
        self._file = f
        f.attrs["schema"] = FEATURES_SCHEMA
        f.attrs["modalities"] = list(dims)
        f.attrs["categories"] = [str(c) for c in categories]
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        group = f.create_group("features", track_order=True)
        for name, dim in dims.items():
            # Lossless gzip (level 1) after byte shuffling: fc1 after ReLU is about half
            # zeros, and bf16-computed values (extract on CUDA) leave the low 16 bits of each
            # float32 zero: 0.27 of the raw size for bf16 values, 0.62 for float32 (demo
            # features); about 136 MB/s to write and 288 MB/s to read per core.
            group.create_dataset(name, shape=(n, dim), dtype=np.float32, track_times=False,
                                 chunks=(max(1, min(chunk_rows, n)), dim),
                                 compression="gzip", compression_opts=1, shuffle=True)
        f.create_dataset("label", shape=(n,), dtype=np.int64, track_times=False)
        f.create_dataset("is_test", shape=(n,), dtype=bool, track_times=False)
        f.create_dataset("is_labeled", shape=(n,), dtype=bool, track_times=False)
        if with_frame:
            f.create_dataset("frame", shape=(n,), dtype=_STR, track_times=False)

    def write(self, start: int, *, features: Mapping[str, np.ndarray], label: np.ndarray,
              is_test: np.ndarray, is_labeled: np.ndarray,
              frame: Sequence[str] | np.ndarray | None = None) -> None:
        stop = start + len(label)
        f = self._file
        for name, block in features.items():
            f["features"][name][start:stop] = np.asarray(block, dtype=np.float32)
        f["label"][start:stop] = np.asarray(label, dtype=np.int64)
        f["is_test"][start:stop] = np.asarray(is_test, dtype=bool)
        f["is_labeled"][start:stop] = np.asarray(is_labeled, dtype=bool)
        if frame is not None:
            f["frame"][start:stop] = _strings(frame)

    def close(self) -> None:
        self.__exit__(None, None, None)

    def __enter__(self) -> FeaturesWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:  # validated before the rename: nothing invalid at `path`
            try:
                _validate_features_file(self._file, self.path, require_labeled=False)
            except StoreError as err:
                self._ctx.__exit__(StoreError, err, err.__traceback__)  # removes the file
                raise
        self._ctx.__exit__(exc_type, exc, tb)


@_reader
def validate_features(path: str | Path, *, require_labeled: bool = True) -> None:
    """Raise `StoreError` naming the file and the problem; return quietly if sound."""
    with _open(path, FEATURES_SCHEMA) as f:
        _validate_features_file(f, Path(path), require_labeled=require_labeled)


def _validate_features_file(f: h5py.File, path: Path, *, require_labeled: bool) -> None:
    modalities = _attr_list(f.attrs.get("modalities", []))
    categories = _attr_list(f.attrs.get("categories", []))
    if not modalities:
        raise StoreError(f"{path}: attrs['modalities'] is missing or empty")
    if not categories:
        raise StoreError(f"{path}: attrs['categories'] is missing or empty")
    label = _require(f, "label", path)
    _check_dtype(path, "label", label, np.integer)
    n = label.shape[0]
    for name in modalities:
        ds = _require(f, f"features/{name}", path)
        if ds.ndim != 2:
            raise StoreError(f"{path}: dataset 'features/{name}' must be 2-D [N, D], "
                             f"got shape {ds.shape}")
        _check_length(path, f"features/{name}", ds, n)
        if not np.issubdtype(ds.dtype, np.floating):
            raise StoreError(f"{path}: dataset 'features/{name}' must be float, got {ds.dtype}")
        _check_finite(path, f"features/{name}", ds)
    for name in ("is_test", "is_labeled"):
        ds = _require(f, name, path)
        _check_length(path, name, ds, n)
        if ds.dtype != bool:
            raise StoreError(f"{path}: dataset {name!r} must be bool, got {ds.dtype}")
    if "frame" in f:
        _check_length(path, "frame", f["frame"], n)
        _read_strings(f["frame"], path)
    labels = label[()]
    if labels.size and (labels.min() < 0 or labels.max() >= len(categories)):
        raise StoreError(f"{path}: /label values must lie in [0, {len(categories)}), "
                         f"found {labels.min()}..{labels.max()}")
    is_test, is_labeled = f["is_test"][()], f["is_labeled"][()]
    both = np.flatnonzero(is_test & is_labeled)
    if both.size:
        raise StoreError(f"{path}: {both.size} test examples are marked labelled "
                         f"(first at row {both[0]}); labels of held-out data must stay unseen")
    if require_labeled and not is_labeled.any():
        raise StoreError(f"{path}: no labelled training example (/is_labeled is all false)")
    if require_labeled and not is_test.any():
        raise StoreError(f"{path}: no test example (/is_test is all false)")


@_reader
def read_features(path: str | Path, *, require_labeled: bool = True) -> FeatureSet:
    """Validate and load a features file."""
    path = Path(path)
    with _open(path, FEATURES_SCHEMA) as f:
        _validate_features_file(f, path, require_labeled=require_labeled)
        modalities = _attr_list(f.attrs["modalities"])
        attrs = {k: v for k, v in f.attrs.items() if k not in ("modalities", "categories")}
        return FeatureSet(
            features={m: f["features"][m][()].astype(np.float32, copy=False)
                      for m in modalities},
            label=f["label"][()].astype(np.int64),
            is_test=f["is_test"][()],
            is_labeled=f["is_labeled"][()],
            categories=_attr_list(f.attrs["categories"]),
            frame=_read_strings(f["frame"], path) if "frame" in f else None,
            attrs=attrs,
        )


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImagesIndex:
    """Everything in an images file except the pixels (small enough to hold in memory)."""

    label: np.ndarray
    frame: np.ndarray
    instance: np.ndarray
    video: np.ndarray
    index: np.ndarray
    categories: list[str]
    size: int
    attrs: dict[str, Any]

    def __len__(self) -> int:
        return int(self.label.shape[0])


class ImagesWriter:
    """Append preprocessed frames to an `ssmvae-images/1` file, chunk by chunk.

    The file grows as frames arrive (the stage streams and never holds the dataset in
    memory) and is renamed into place on a clean `close`.
    """

    def __init__(self, path: str | Path, *, size: int, categories: Sequence[str],
                 attrs: Mapping[str, Any] | None = None, chunk_rows: int = 64) -> None:
        self.path = Path(path)
        self.size = size
        self._ctx = atomic_h5(self.path)
        f = self._ctx.__enter__()
        self._file = f
        self._n = 0
        f.attrs["schema"] = IMAGES_SCHEMA
        f.attrs["categories"] = [str(c) for c in categories]
        f.attrs["size"] = int(size)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        for name in ("rgb", "depth"):
            f.create_dataset(name, shape=(0, size, size, 3), maxshape=(None, size, size, 3),
                             dtype=np.uint8, chunks=(chunk_rows, size, size, 3),
                             track_times=False)
        for name, dtype in (("label", np.int64), ("video", np.int64), ("index", np.int64),
                            ("frame", _STR), ("instance", _STR)):
            f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype,
                             chunks=(1024,), track_times=False)

    def __len__(self) -> int:
        return self._n

    def append(self, *, rgb: np.ndarray, depth: np.ndarray, label: Sequence[int],
               frame: Sequence[str], instance: Sequence[str], video: Sequence[int],
               index: Sequence[int]) -> None:
        k = len(label)
        shape = (k, self.size, self.size, 3)
        for name, block in (("rgb", rgb), ("depth", depth)):
            if block.shape != shape or block.dtype != np.uint8:
                raise ValueError(f"{name}: expected uint8 {shape}, got {block.dtype} "
                                 f"{block.shape}")
        start, stop = self._n, self._n + k
        f = self._file
        columns = {"rgb": rgb, "depth": depth, "label": np.asarray(label, np.int64),
                   "video": np.asarray(video, np.int64), "index": np.asarray(index, np.int64),
                   "frame": _strings(frame), "instance": _strings(instance)}
        for name, block in columns.items():
            f[name].resize(stop, axis=0)
            f[name][start:stop] = block
        self._n = stop

    def drop_unused_categories(self) -> list[str]:
        """Keep only the categories some written frame has, relabel; return the kept ones."""
        f = self._file
        categories = _attr_list(f.attrs["categories"])
        labels = f["label"][()]
        if labels.size == 0:
            return categories
        used = np.unique(labels)
        f["label"][:] = np.searchsorted(used, labels)
        kept = [categories[i] for i in used]
        f.attrs["categories"] = kept
        return kept

    def close(self) -> None:
        self._ctx.__exit__(None, None, None)

    def __enter__(self) -> ImagesWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._ctx.__exit__(exc_type, exc, tb)


@_reader
def read_images_index(path: str | Path) -> ImagesIndex:
    """Validate an images file and read everything but its pixels."""
    path = Path(path)
    with _open(path, IMAGES_SCHEMA) as f:
        label = _require(f, "label", path)
        _check_dtype(path, "label", label, np.integer)
        n = label.shape[0]
        size = int(f.attrs.get("size", -1))
        for name in ("rgb", "depth"):
            ds = _require(f, name, path)
            if ds.shape[1:] != (size, size, 3) or ds.dtype != np.uint8:
                raise StoreError(f"{path}: dataset {name!r} must be uint8 [N, {size}, {size}, 3],"
                                 f" got {ds.dtype} {ds.shape}")
            _check_length(path, name, ds, n)
        for name in ("frame", "instance", "video", "index"):
            _check_length(path, name, _require(f, name, path), n)
        for name in ("video", "index"):
            _check_dtype(path, name, f[name], np.integer)
        categories = _attr_list(f.attrs.get("categories", []))
        labels = label[()]
        if labels.size and (labels.min() < 0 or labels.max() >= len(categories)):
            raise StoreError(f"{path}: /label values must lie in [0, {len(categories)})")
        attrs = {k: v for k, v in f.attrs.items() if k not in ("categories", "size")}
        return ImagesIndex(label=labels.astype(np.int64), frame=_read_strings(f["frame"], path),
                           instance=_read_strings(f["instance"], path), video=f["video"][()],
                           index=f["index"][()], categories=categories, size=size, attrs=attrs)


def open_images(path: str | Path) -> h5py.File:
    """Open a validated images file for reading pixels block by block (`f["rgb"][a:b]`)."""
    read_images_index(path)
    return _open(path, IMAGES_SCHEMA)


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class TrialSplit:
    """One trial's masks, aligned with the rows of the images file."""

    trial: int
    is_test: np.ndarray
    is_labeled: np.ndarray
    test_instances: list[str]


def write_splits(path: str | Path, *, frames: Sequence[str], splits: Sequence[TrialSplit],
                 attrs: Mapping[str, Any] | None = None) -> None:
    n = len(frames)
    with atomic_h5(path) as f:
        f.attrs["schema"] = SPLITS_SCHEMA
        f.attrs["trials"] = [int(s.trial) for s in splits]
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        _dataset(f, "frame", _strings(frames), dtype=_STR)
        for split in splits:
            if len(split.is_test) != n or len(split.is_labeled) != n:
                raise ValueError(f"trial {split.trial}: masks must have {n} rows")
            group = f.create_group(f"trial-{split.trial}")
            group.attrs["test_instances"] = list(split.test_instances)
            _dataset(group, "is_test", np.asarray(split.is_test, dtype=bool))
            _dataset(group, "is_labeled", np.asarray(split.is_labeled, dtype=bool))
    read_split(path, splits[0].trial)


@_reader
def read_split(path: str | Path, trial: int,
               frames: Sequence[str] | np.ndarray | None = None) -> TrialSplit:
    """Read trial `trial`; with `frames` (the images file's), check the rows line up."""
    path = Path(path)
    with _open(path, SPLITS_SCHEMA) as f:
        stored = _read_strings(_require(f, "frame", path), path)
        if frames is not None and (len(frames) != len(stored)
                                   or not np.array_equal(np.asarray(frames, object), stored)):
            raise StoreError(f"{path}: its frames do not match the images file row by row; "
                             "re-run the split stage")
        group_name = f"trial-{trial}"
        if group_name not in f:
            trials = ", ".join(str(t) for t in np.atleast_1d(f.attrs.get("trials", [])))
            raise StoreError(f"{path}: no trial {trial}; the file holds trials {trials}")
        group = f[group_name]
        for name in ("is_test", "is_labeled"):
            _check_dtype(path, f"{group_name}/{name}", _require(f, f"{group_name}/{name}", path),
                         np.bool_)
        split = TrialSplit(
            trial=int(trial),
            is_test=_require(f, f"{group_name}/is_test", path)[()],
            is_labeled=_require(f, f"{group_name}/is_labeled", path)[()],
            test_instances=_attr_list(group.attrs.get("test_instances", [])),
        )
    for name in ("is_test", "is_labeled"):
        if getattr(split, name).shape != (len(stored),):
            raise StoreError(f"{path}: {group_name}/{name} must have {len(stored)} rows")
    if (split.is_test & split.is_labeled).any():
        raise StoreError(f"{path}: {group_name} marks held-out frames as labelled")
    return split


# --------------------------------------------------------------------------- inspect


@_reader
def describe(path: str | Path) -> str:
    """A human-readable summary of any of the project's HDF5 files."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: file not found")
    try:
        with h5py.File(path, "r") as f:
            schema = f.attrs.get("schema")
    except OSError as err:
        raise StoreError(f"{path}: not a readable HDF5 file ({err})") from err
    schema = schema.decode() if isinstance(schema, bytes) else schema
    lines = [f"{path}", f"  schema: {schema}"]
    if schema == FEATURES_SCHEMA:
        validate_features(path, require_labeled=False)
        with h5py.File(path, "r") as f:
            label, is_test, is_labeled = f["label"][()], f["is_test"][()], f["is_labeled"][()]
            n = len(label)
            lines.append(f"  examples: {n} (train {int((~is_test).sum())}, labelled "
                         f"{int(is_labeled.sum())}, test {int(is_test.sum())})")
            for m in _attr_list(f.attrs["modalities"]):
                ds = f["features"][m]
                lines.append(f"  features/{m}: {ds.dtype} {tuple(ds.shape)}")
            cats = _attr_list(f.attrs["categories"])
            lines.append(f"  categories: {len(cats)} ({', '.join(cats[:8])}"
                         f"{', ...' if len(cats) > 8 else ''})")
            lines.extend(_attr_lines(f.attrs, skip={"schema", "modalities", "categories"}))
    elif schema == IMAGES_SCHEMA:
        index = read_images_index(path)
        lines.append(f"  frames: {len(index)}, size {index.size}x{index.size}, "
                     f"{len(set(index.instance))} instances, {len(index.categories)} categories")
        with h5py.File(path, "r") as f:
            lines.extend(_attr_lines(f.attrs, skip={"schema", "categories", "size"}))
    elif schema == SPLITS_SCHEMA:
        with h5py.File(path, "r") as f:
            trials = [int(t) for t in np.atleast_1d(f.attrs.get("trials", []))]
            lines.append(f"  frames: {f['frame'].shape[0]}, trials: {trials}")
        for t in trials:
            s = read_split(path, t)
            lines.append(f"  trial {t}: test {int(s.is_test.sum())}, labelled "
                         f"{int(s.is_labeled.sum())}, held out: {', '.join(s.test_instances)}")
    else:
        raise StoreError(f"{path}: unknown schema {schema!r}; expected one of "
                         f"{FEATURES_SCHEMA}, {IMAGES_SCHEMA}, {SPLITS_SCHEMA}")
    return "\n".join(lines)


def _attr_lines(attrs: Any, skip: set[str]) -> list[str]:
    return [f"  attrs.{k}: {attrs[k]}" for k in sorted(attrs) if k not in skip]
