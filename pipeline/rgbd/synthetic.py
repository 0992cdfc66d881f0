"""A procedural RGB-D object set written in exactly the Washington RGB-D layout.

The real dataset cannot be fetched everywhere (no network, licence), so the default profile
renders its own: simple 3-D shapes on a table, turning on a turntable and seen from three
elevations (videos 1, 2, 4 at 30, 45 and 60 degrees, as in the real capture), sphere-traced
in numpy. Files, names, 16-bit depth in millimetres with Kinect-like holes, crop sizes and
the `testinstance_ids.txt` format are those of the evaluation subset, so every later stage
runs the same code on both.

The categories are built so that neither modality alone settles the class: pairs share a
shape and differ only in colour (depth cannot tell them apart), others share a colour and
differ in shape (RGB sees only a silhouette and soft shading). Joint input should beat either
modality alone, which is the effect the paper measures.

At the evaluation subset's scale (`paper_scale`, for bench/rehearse_paper.py) the set has 51
categories (the 10 above and 41 more shape and colour pairs), 300 instances (3 to 10 per
category), 41,877 frames spread unevenly over the 900 videos, and crops zoomed per instance
from a few dozen to a few hundred pixels a side, like the real crops.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import UserError
from pipeline.rgbd.layout import ARCHIVE_ROOT, VIDEOS
from pipeline.rgbd.splits import format_trials

VERSION = 2  # bump when the rendering changes: cached archives carry it in their name
ELEVATION = {1: 30.0, 2: 45.0, 4: 60.0}  # degrees, per video
PIXEL_MM = 2.5  # size of one pixel on the object
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so the same seed gives the same archive bytes


@dataclass(frozen=True)
class Category:
    name: str
    shape: str  # ellipsoid | cylinder | box | slab | disc | bottle
    colour: tuple[int, int, int]  # RGB
    dims: tuple[float, float, float]  # half extents in mm (x, y = up, z)


TEXTURES = ("plain", "stripes", "checker", "speckle")
RED, GREEN, YELLOW, BLUE = (200, 45, 35), (70, 165, 55), (225, 195, 45), (45, 85, 200)
CATEGORIES = (
    Category("tomato", "ellipsoid", RED, (45, 40, 45)),
    Category("lime", "ellipsoid", GREEN, (45, 40, 45)),
    Category("soda_can", "cylinder", RED, (40, 70, 40)),
    Category("food_can", "cylinder", GREEN, (40, 70, 40)),
    Category("cereal_box", "box", YELLOW, (70, 90, 30)),
    Category("food_box", "box", BLUE, (70, 90, 30)),
    Category("sponge", "slab", YELLOW, (55, 18, 40)),
    Category("plate", "disc", BLUE, (85, 8, 85)),
    Category("water_bottle", "bottle", GREEN, (35, 100, 35)),
    Category("orange", "ellipsoid", (235, 125, 35), (45, 42, 45)),
)
# More categories for the paper's scale: every shape in every further colour, fixed dims.
_MORE_COLOURS = {"red": RED, "green": GREEN, "yellow": YELLOW, "blue": BLUE,
                 "purple": (120, 60, 160), "white": (225, 225, 215), "black": (45, 45, 50)}
_SHAPE_DIMS = {"ellipsoid": (50, 45, 40), "cylinder": (35, 60, 35), "box": (60, 80, 35),
               "slab": (60, 20, 45), "disc": (75, 10, 75), "bottle": (30, 90, 30)}
CATEGORIES = (*CATEGORIES, *(
    Category(f"{colour}_{shape}", shape, rgb, dims)
    for shape, dims in _SHAPE_DIMS.items() for colour, rgb in _MORE_COLOURS.items()))


@dataclass(frozen=True)
class SyntheticSpec:
    seed: int = 0
    categories: int = 8
    instances: int = 3
    frames: int = 6  # per video
    trials: int = 10
    # The evaluation subset's shape (`paper_scale`); the defaults keep the counts above.
    total_instances: int = 0  # > 0: spread over the categories, 3 to 10 each
    total_frames: int = 0  # > 0: spread over the videos (`frames` is then ignored)
    zoom: tuple[float, float] = (1.0, 1.0)  # per-instance crop scale, log-uniform in range
    # rendered pixel size (mm); coarser renders faster and is zoomed up to the same crop size
    pixel_mm: float = PIXEL_MM

    def check(self) -> None:
        if not 2 <= self.categories <= len(CATEGORIES):
            raise UserError(f"download.synthetic_categories: expected 2..{len(CATEGORIES)}, "
                            f"got {self.categories}")
        if self.instances < 2 or self.frames < 1 or self.trials < 1:
            raise UserError(f"synthetic set: expected >= 2 instances, >= 1 frame and trial, "
                            f"got {self.instances}, {self.frames}, {self.trials}")
        if self.total_instances and not 3 * self.categories <= self.total_instances \
                <= 10 * self.categories:
            raise UserError(f"synthetic set: total_instances {self.total_instances} must lie "
                            f"in 3..10 per category ({3 * self.categories}.."
                            f"{10 * self.categories})")
        videos = len(VIDEOS) * (self.total_instances or self.categories * self.instances)
        if self.total_frames and self.total_frames < videos:
            raise UserError(f"synthetic set: total_frames {self.total_frames} is fewer than "
                            f"one per video ({videos})")

    def instance_counts(self) -> list[int]:
        """Instances of each category (in name order)."""
        if not self.total_instances:
            return [self.instances] * self.categories
        rng = np.random.default_rng([self.seed, 11])
        return _spread(rng, self.total_instances, self.categories, 3, 10)

    def frame_counts(self) -> list[int]:
        """Frames of each video, instance by instance in name order, videos 1, 2, 4."""
        videos = len(VIDEOS) * sum(self.instance_counts())
        if not self.total_frames:
            return [self.frames] * videos
        rng = np.random.default_rng([self.seed, 13])
        mean = self.total_frames / videos
        return _spread(rng, self.total_frames, videos, max(1, round(0.6 * mean)),
                       max(1, round(1.4 * mean)))


def paper_scale(seed: int = 0) -> SyntheticSpec:
    """The evaluation subset's layout and size: 51 categories, 300 instances, 900 videos,
    41,877 frames, crops of a few dozen to a few hundred pixels a side, 10 trials."""
    return SyntheticSpec(seed=seed, categories=51, trials=10, total_instances=300,
                         total_frames=41_877, zoom=(0.6, 3.0), pixel_mm=2 * PIXEL_MM)


def _spread(rng: np.random.Generator, total: int, n: int, low: int, high: int) -> list[int]:
    """`n` counts in [low, high] (widened if they cannot reach `total`) summing to `total`."""
    low, high = min(low, total // n), max(high, -(-total // n))
    counts = rng.integers(low, high + 1, n)
    while (gap := total - int(counts.sum())) != 0:  # nudge random entries one at a time
        room = np.flatnonzero(counts < high) if gap > 0 else np.flatnonzero(counts > low)
        picks = rng.choice(room, size=min(abs(gap), room.size), replace=False)
        counts[picks] += np.sign(gap)
    return counts.tolist()


# --------------------------------------------------------------------------- geometry


def _sdf(shape: str, p: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Signed distance (mm) from points `p` [..., 3] to a shape with half extents `d`."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    if shape == "ellipsoid":
        k0 = np.sqrt((x / d[0]) ** 2 + (y / d[1]) ** 2 + (z / d[2]) ** 2)
        k1 = np.sqrt((x / d[0] ** 2) ** 2 + (y / d[1] ** 2) ** 2 + (z / d[2] ** 2) ** 2)
        return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)
    if shape in ("box", "slab"):
        q = np.abs(p) - d
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
        return outside + np.minimum(q.max(axis=-1), 0.0)
    if shape in ("cylinder", "disc", "bottle"):
        rounding = 12.0 if shape == "bottle" else 0.0
        qx = np.hypot(x / d[0], z / d[2]) * min(d[0], d[2]) - min(d[0], d[2]) + rounding
        qy = np.abs(y) - d[1] + rounding
        outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
        return outside + np.minimum(np.maximum(qx, qy), 0.0) - rounding
    raise ValueError(f"unknown shape {shape!r}")


def _rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])


@dataclass(frozen=True)
class _Instance:
    cat: Category
    dims: np.ndarray
    colour: np.ndarray
    texture: str
    freq: float
    phase: float
    distance: float  # camera to object centre, mm
    zoom: float = 1.0  # the crop's scale: pixels per PIXEL_MM pixel
    pixel_mm: float = PIXEL_MM  # rendered pixel size


def _instance(cat: Category, rng: np.random.Generator,
              zoom: tuple[float, float] = (1.0, 1.0), pixel_mm: float = PIXEL_MM) -> _Instance:
    # Sizes, proportions and textures vary per instance (a texture never names the category),
    # so RGB must rely on colour and outline, which same-coloured categories share in part.
    dims = np.asarray(cat.dims) * rng.uniform(0.8, 1.2) * rng.uniform(0.75, 1.25, 3)
    texture = str(rng.choice(TEXTURES))
    colour = np.clip(np.asarray(cat.colour) * rng.uniform(0.8, 1.15, 3) + rng.normal(0, 10, 3),
                     0, 255)
    scale = 1.0
    if zoom != (1.0, 1.0):  # drawn last: the default set's instances stay as they were
        scale = float(np.exp(rng.uniform(np.log(zoom[0]), np.log(zoom[1]))))
    return _Instance(cat, dims, colour, texture, freq=rng.uniform(0.08, 0.16),
                     phase=rng.uniform(0, 2 * np.pi), distance=rng.uniform(750.0, 1050.0),
                     zoom=scale, pixel_mm=pixel_mm)


def _texture(inst: _Instance, q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Albedo factor in [0.5, 1.2] at object-space points `q` [N, 3]."""
    kind = inst.texture
    if kind == "stripes":
        return np.where(np.sin(q[:, 1] * inst.freq + inst.phase) > 0.3, 1.2, 0.75)
    if kind == "checker":
        cells = np.floor(q * inst.freq / 3.0 + inst.phase).sum(axis=1)
        return np.where(cells % 2 == 0, 1.0, 0.7)
    if kind == "speckle":
        return 1.0 + 0.12 * np.sin(q[:, 0] * 0.7 + inst.phase) * np.sin(q[:, 2] * 0.9)
    return np.ones(len(q))


def render(inst: _Instance, elevation_deg: float, angle: float,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One view: RGB uint8, depth uint16 (mm, 0 = missing) and mask, cropped to the object."""
    e = np.radians(elevation_deg)
    forward = np.array([0.0, -np.sin(e), -np.cos(e)])
    right, up = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(e), -np.sin(e)])
    centre = np.array([0.0, inst.dims[1], 0.0])  # the object stands on the table (y = 0)
    half = int(np.ceil(1.1 * np.linalg.norm(inst.dims) / inst.pixel_mm))
    u = (np.arange(-half, half) + 0.5) * inst.pixel_mm
    uu, vv = np.meshgrid(u, u)
    start = 400.0
    origin = (centre - start * forward + uu[..., None] * right - vv[..., None] * up)
    origin = origin.reshape(-1, 3)
    rot = _rot_y(angle)
    shape = inst.cat.shape

    def scene(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        obj = _sdf(shape, (p - centre) @ rot.T, inst.dims)
        return obj, p[:, 1]

    t = origin[:, 1] / np.sin(e)  # where each ray meets the table, found exactly
    # Only rays through the object's bounding sphere need marching, from where they enter it.
    oc = origin - centre
    b = oc @ forward
    disc = b * b - (np.sum(oc * oc, axis=1) - (1.05 * np.linalg.norm(inst.dims)) ** 2)
    near = np.flatnonzero(disc > 0)
    tn = -b[near] - np.sqrt(disc[near])
    for _ in range(48):
        obj, table = scene(origin[near] + tn[:, None] * forward)
        tn += np.minimum(obj, table) * 0.95
    t[near] = np.minimum(tn, t[near])
    p = origin + t[:, None] * forward
    obj, table = scene(p)
    mask = (obj < table) & (obj < 2.0)

    rgb = np.empty((len(p), 3))
    wood = 0.9 + 0.1 * np.sin(p[:, 0] * 0.15 + 3.0 * np.sin(p[:, 2] * 0.02))
    rgb[:] = np.array([150.0, 128.0, 105.0])
    rgb *= wood[:, None]
    hit = p[mask]
    eps = 0.5
    normal = np.stack([
        _sdf(shape, (hit + eps * a - centre) @ rot.T, inst.dims)
        - _sdf(shape, (hit - eps * a - centre) @ rot.T, inst.dims)
        for a in np.eye(3)], axis=1)
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-9)
    light = np.array([0.4, 0.8, 0.45]) / np.linalg.norm([0.4, 0.8, 0.45])
    shade = 0.8 + 0.2 * np.clip(normal @ light, 0.0, 1.0)
    albedo = _texture(inst, (hit - centre) @ rot.T, rng)
    rgb[mask] = inst.colour * (shade * albedo)[:, None]
    rgb += rng.normal(0.0, 4.0, rgb.shape)

    n = 2 * half
    depth = inst.distance - start + t + rng.normal(0.0, 1.0, t.shape)
    depth = depth.reshape(n, n)
    mask2 = mask.reshape(n, n)
    depth = _kinect_holes(depth, rng)
    rows, cols = np.nonzero(mask2)
    margin = rng.integers(3, 12, 4)
    top, bottom = max(0, rows.min() - margin[0]), min(n, rows.max() + 1 + margin[1])
    left, right_ = max(0, cols.min() - margin[2]), min(n, cols.max() + 1 + margin[3])
    crop = (slice(top, bottom), slice(left, right_))
    rgb8 = np.clip(np.round(rgb), 0, 255).astype(np.uint8).reshape(n, n, 3)[crop]
    depth16 = np.clip(np.round(depth), 0, 65535).astype(np.uint16)[crop]
    mask8 = (mask2[crop] * 255).astype(np.uint8)
    zoom = inst.zoom * inst.pixel_mm / PIXEL_MM
    if zoom != 1.0:  # a closer or farther camera; depth and mask keep their holes
        h, w = mask8.shape
        size = (max(8, round(w * zoom)), max(8, round(h * zoom)))
        rgb8 = cv2.resize(rgb8, size, interpolation=cv2.INTER_LINEAR)
        depth16 = cv2.resize(depth16, size, interpolation=cv2.INTER_NEAREST)
        mask8 = cv2.resize(mask8, size, interpolation=cv2.INTER_NEAREST)
    return rgb8, depth16, mask8


def _kinect_holes(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Zero where a Kinect loses depth: at depth edges, and in small random blobs."""
    gy, gx = np.gradient(depth)
    edges = np.hypot(gx, gy) > 6.0
    edges = cv2.dilate(edges.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool)
    edges &= rng.random(depth.shape) < 0.7
    drops = rng.random(depth.shape) < 0.004
    drops = cv2.dilate(drops.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return np.where(edges | drops, 0.0, depth)


# --------------------------------------------------------------------------- the dataset


def _png(image: np.ndarray) -> bytes:
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def _add(zf: zipfile.ZipFile, name: str, data: bytes | None = None) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.external_attr = (0o40755 if data is None else 0o100644) << 16
    zf.writestr(info, b"" if data is None else data,
                compress_type=zipfile.ZIP_STORED if name.endswith(".png")
                else zipfile.ZIP_DEFLATED)


def generate(spec: SyntheticSpec, archive: str | Path, trials_file: str | Path,
             progress: Callable[[int], None] | None = None, workers: int = 1) -> None:
    """Write `archive` (zip, `rgbd-dataset_eval/<category>/...`) and `testinstance_ids.txt`.

    The same spec gives the same bytes, with any number of `workers` (processes rendering
    instances; the archive is written in order by this one). Files are written under
    temporary names and renamed. `progress` is called with 1 per instance written.
    """
    spec.check()
    archive, trials_file = Path(archive), Path(trials_file)
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".tmp")
    cats = sorted(CATEGORIES[:spec.categories], key=lambda c: c.name)
    counts = spec.instance_counts()
    frames = iter(spec.frame_counts())
    jobs = [(spec, cat, k, ci, [next(frames) for _ in VIDEOS])
            for ci, cat in enumerate(cats) for k in range(1, counts[ci] + 1)]
    with zipfile.ZipFile(tmp, "w") as zf:
        _add(zf, f"{ARCHIVE_ROOT}/")
        written: set[str] = set()
        for job, files in zip(jobs, _rendered(jobs, workers), strict=True):
            cat = job[1]
            if cat.name not in written:
                _add(zf, f"{ARCHIVE_ROOT}/{cat.name}/")
                written.add(cat.name)
            for name, data in files:
                _add(zf, name, data)
            if progress is not None:
                progress(1)
    tmp.replace(archive)
    trials = _choose_trials([c.name for c in cats], counts, spec)
    tmp_trials = trials_file.with_name(trials_file.name + ".tmp")
    tmp_trials.write_text(format_trials(trials))
    tmp_trials.replace(trials_file)


def _rendered(jobs: list, workers: int) -> Iterator[list[tuple[str, bytes | None]]]:
    if workers <= 1:
        yield from (_instance_files(*job) for job in jobs)
        return
    with Pool(workers) as pool:
        yield from pool.imap(_instance_files_of, jobs, chunksize=1)


def _instance_files_of(job: tuple) -> list[tuple[str, bytes | None]]:
    return _instance_files(*job)


def _instance_files(spec: SyntheticSpec, cat: Category, k: int, ci: int,
                    frames: list[int]) -> list[tuple[str, bytes | None]]:
    """One instance's folder and files, (archive name, bytes; None for a folder)."""
    instance = f"{cat.name}_{k}"
    folder = f"{ARCHIVE_ROOT}/{cat.name}/{instance}"
    files: list[tuple[str, bytes | None]] = [(folder + "/", None)]
    inst = _instance(cat, np.random.default_rng([spec.seed, ci, k]), spec.zoom, spec.pixel_mm)
    start = np.random.default_rng([spec.seed, ci, k, 99]).uniform(0, 2 * np.pi)
    for video, count in zip(VIDEOS, frames, strict=True):
        for f in range(count):
            rng = np.random.default_rng([spec.seed, ci, k, video, f])
            angle = start + 2 * np.pi * f / count + video * 0.3
            rgb, depth, mask = render(inst, ELEVATION[video], angle, rng)
            stem = f"{folder}/{instance}_{video}_{1 + 5 * f}"  # every 5th frame, like _eval
            x, y = rng.integers(100, 400), rng.integers(80, 300)
            files += [(f"{stem}_crop.png", _png(rgb)), (f"{stem}_depthcrop.png", _png(depth)),
                      (f"{stem}_maskcrop.png", _png(mask)),
                      (f"{stem}_loc.txt", f"{x},{y}\n".encode())]
    return files


def _choose_trials(categories: list[str], counts: list[int],
                   spec: SyntheticSpec) -> dict[int, list[str]]:
    rng = np.random.default_rng([spec.seed, 7])
    return {t: [f"{c}_{int(rng.integers(1, n + 1))}" for c, n in zip(categories, counts,
                                                                       strict=True)]
            for t in range(1, spec.trials + 1)}
