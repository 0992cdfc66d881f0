"""Appendix A of the paper (after Eitel et al. 2015): RGB and depth crops to square images.

For each frame both images get their longer side scaled to `size` and the shorter side padded
by repeating the edge pixels, so the object is not distorted and no artificial black border
appears. Depth is resized and padded as 16-bit millimetres first (holes kept out of the
interpolation), and only then are its holes (0) given the nearest valid depth, the map
normalised to 0..255 and jet-coloured (near = red, far = blue): colouring first and resizing
the colours would blend them into colours that are not on the jet scale.

`preprocess_dataset` streams frames through a process pool into `data/images.h5`, chunk by
chunk; a frame that cannot be read is skipped with its reason, never dropped silently.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from pipeline.errors import UserError
from pipeline.rgbd.layout import Frame, index_frames
from pipeline.store import ImagesWriter

cv2.setNumThreads(1)  # parallelism comes from the process pool, not from OpenCV


class FrameError(Exception):
    """A frame's files cannot be used; the message is the reason listed in the report."""


class TooManySkipped(UserError):
    """More frames were unreadable than `preprocess.max_skip_fraction` allows."""

    def __init__(self, message: str, report: PreprocessReport) -> None:
        super().__init__(message)
        self.report = report  # so the stage can still list what was skipped


# --------------------------------------------------------------------------- image operations


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """Scale the longer side to `size` (area averaging down, bilinear up)."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)


def _pad(image: np.ndarray, size: int) -> np.ndarray:
    """Pad to `size` x `size`, centred, by repeating the edge pixels."""
    h, w = image.shape[:2]
    top, left = (size - h) // 2, (size - w) // 2
    return cv2.copyMakeBorder(image, top, size - h - top, left, size - w - left,
                              cv2.BORDER_REPLICATE)


def square(image: np.ndarray, size: int) -> np.ndarray:
    """Scale the longer side to `size`; pad the shorter side by repeating its edge pixels."""
    return _pad(_resize(image, size), size)


def square_depth(depth: np.ndarray, size: int) -> np.ndarray:
    """`square` for a depth map with holes (0): float32 millimetres, holes still 0.

    Hole-aware: each output pixel is the interpolation weight-normalised mean of the *valid*
    input pixels under it, so a hole never drags an edge towards 0 and no depth is invented
    between the object and a hole; a pixel that sees only holes stays a hole.
    """
    valid = (depth > 0).astype(np.float32)
    total = _resize(depth.astype(np.float32) * valid, size)
    weight = _resize(valid, size)
    seen = weight > 1e-3
    resized = np.where(seen, total / np.where(seen, weight, 1.0), 0.0).astype(np.float32)
    return _pad(resized, size)


def fill_depth_holes(depth: np.ndarray) -> np.ndarray:
    """Give every 0 (missing) pixel the value of its nearest valid pixel (Euclidean)."""
    missing = depth == 0
    if not missing.any():
        return depth
    if missing.all():
        raise FrameError("depth map has no valid pixel")
    # Only the indices of the nearest valid pixel: not computing the distances too saves ~40 %.
    rows, cols = ndimage.distance_transform_edt(missing, return_distances=False,
                                                return_indices=True)
    return depth[rows, cols]


def normalise_depth(depth: np.ndarray) -> np.ndarray:
    """Scale a hole-free depth map linearly to 0..255 (nearest = 0) as uint8."""
    d = depth.astype(np.float32)
    lo, hi = float(d.min()), float(d.max())
    if hi <= lo:
        return np.zeros(d.shape, np.uint8)
    return np.round((d - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def jet(normalised: np.ndarray) -> np.ndarray:
    """Jet colours in RGB order, near (0) = red, far (255) = blue, as Eitel et al."""
    # OpenCV's jet maps 0 to blue and returns BGR: invert, then swap to RGB.
    bgr = cv2.applyColorMap(255 - normalised, cv2.COLORMAP_JET)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def colourise_depth(depth: np.ndarray) -> np.ndarray:
    """Depth in millimetres (0 = missing) -> jet-coloured uint8 RGB, at the same size."""
    return jet(normalise_depth(fill_depth_holes(depth)))


# --------------------------------------------------------------------------- one frame


def read_rgb(path: Path | None) -> np.ndarray:
    if path is None:
        raise FrameError("missing RGB file (_crop.png)")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise FrameError(f"unreadable RGB file {path.name}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_depth(path: Path | None) -> np.ndarray:
    """The 16-bit depth map, read unchanged (never cast to 8 bits: it would wrap)."""
    if path is None:
        raise FrameError("missing depth file (_depthcrop.png)")
    depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if depth is None or depth.size == 0:
        raise FrameError(f"unreadable depth file {path.name}")
    if depth.ndim != 2:
        raise FrameError(f"depth file {path.name} has {depth.shape[2]} channels, expected 1")
    if depth.dtype != np.uint16:
        raise FrameError(f"depth file {path.name} is {depth.dtype}, expected 16-bit millimetres")
    return depth


def process_frame(rgb_path: Path | None, depth_path: Path | None,
                  size: int) -> tuple[np.ndarray, np.ndarray]:
    """Both modalities of one frame as uint8 [size, size, 3]; `FrameError` if unusable."""
    rgb = read_rgb(rgb_path)
    depth = read_depth(depth_path)
    return square(rgb, size), colourise_depth(square_depth(depth, size))


# --------------------------------------------------------------------------- the dataset


@dataclass
class PreprocessReport:
    frames: int = 0
    written: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    size: int = 0
    empty_categories: list[str] = field(default_factory=list)  # every frame skipped

    def to_dict(self) -> dict:
        return {"frames": self.frames, "written": self.written,
                "skipped_count": len(self.skipped), "skipped": self.skipped,
                "ignored_files": self.ignored_files, "categories": self.categories,
                "empty_categories": self.empty_categories, "size": self.size}


def _work(job: tuple[int, str | None, str | None, int]) -> tuple[int, object, object]:
    i, rgb, depth, size = job
    try:
        out = process_frame(Path(rgb) if rgb else None, Path(depth) if depth else None, size)
    except FrameError as err:
        return i, None, str(err)
    return i, out, None


def _results(jobs: list, workers: int) -> Iterator[tuple[int, object, object]]:
    if workers <= 1:
        yield from map(_work, jobs)
        return
    # Not "fork": forking a process that already runs threads (torch, an HTTP server in
    # tests) can deadlock, and Python >= 3.12 warns about it.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ctx.Pool(workers) as pool:
        yield from pool.imap(_work, jobs, chunksize=8)


def preprocess_dataset(raw: str | Path, out: str | Path, *, size: int, chunk: int = 256,
                       workers: int = 0, max_skip_fraction: float = 0.01, source: str = "",
                       progress: Callable[[int], None] | None = None) -> PreprocessReport:
    """Index the frames under `raw` and write them to `out` (`ssmvae-images/1`), streaming.

    Raises `TooManySkipped` (and leaves no output file) if more than `max_skip_fraction` of
    the frames are unusable; otherwise the skipped ones are listed in the returned report.
    """
    index = index_frames(raw)
    frames: Sequence[Frame] = index.frames
    labels = {c: i for i, c in enumerate(index.categories)}
    report = PreprocessReport(frames=len(frames), categories=index.categories, size=size,
                              ignored_files=[str(p) for p in index.ignored])
    workers = workers or os.cpu_count() or 1
    jobs = [(i, _path(f, "rgb"), _path(f, "depth"), size) for i, f in enumerate(frames)]
    buffer: list[tuple[Frame, np.ndarray, np.ndarray]] = []
    with ImagesWriter(out, size=size, categories=index.categories,
                      attrs={"source": source}) as writer:
        for i, result, reason in _results(jobs, workers):
            if progress is not None:
                progress(1)
            if result is None:
                report.skipped.append({"frame": frames[i].name.frame, "reason": str(reason)})
                _check_skips(report, max_skip_fraction)
                continue
            buffer.append((frames[i], *result))  # type: ignore[misc]
            if len(buffer) >= chunk:
                _flush(writer, buffer, labels)
        _flush(writer, buffer, labels)
        _check_skips(report, max_skip_fraction)
        report.written = len(writer)
        # Labels index the categories of the frames written: one whose every frame was skipped
        # must not leave a gap (a class with no example), and is listed in the report instead.
        report.categories = writer.drop_unused_categories()
        report.empty_categories = sorted(set(index.categories) - set(report.categories))
    return report


def _path(frame: Frame, kind: str) -> str | None:
    path = frame.files.get(kind)
    return str(path) if path is not None else None


def _flush(writer: ImagesWriter, buffer: list, labels: dict[str, int]) -> None:
    if not buffer:
        return
    names = [f.name for f, _, _ in buffer]
    writer.append(rgb=np.stack([r for _, r, _ in buffer]),
                  depth=np.stack([d for _, _, d in buffer]),
                  label=[labels[n.category] for n in names], frame=[n.frame for n in names],
                  instance=[n.instance for n in names], video=[n.video for n in names],
                  index=[n.index for n in names])
    buffer.clear()


def _check_skips(report: PreprocessReport, max_fraction: float) -> None:
    """Fail as soon as the skipped share of *all* frames exceeds the allowed fraction."""
    allowed = max_fraction * report.frames
    if len(report.skipped) > allowed:
        first = "; ".join(f"{s['frame']}: {s['reason']}" for s in report.skipped[:3])
        raise TooManySkipped(
            f"{len(report.skipped)} of {report.frames} frames are unusable, more than "
            f"preprocess.max_skip_fraction={max_fraction} allows (first: {first})", report)
