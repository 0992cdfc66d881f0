"""Appendix A preprocessing: edge-replicating padding, nearest hole fill, jet, bad frames."""

import json
import shutil

import cv2
import h5py
import numpy as np
import pytest

from pipeline.images import (
    FrameError,
    TooManySkipped,
    colourise_depth,
    fill_depth_holes,
    jet,
    normalise_depth,
    preprocess_dataset,
    process_frame,
    read_depth,
    square,
    square_depth,
)
from pipeline.rgbd.layout import index_frames
from pipeline.store import read_images_index


def test_padding_replicates_edge_rows():
    image = np.arange(4 * 8 * 3, dtype=np.uint8).reshape(4, 8, 3)  # landscape, 4 x 8
    out = square(image, 8)  # longer side already 8: no scaling, 2 rows padded on each side
    np.testing.assert_array_equal(out[2:6], image)
    for row in (0, 1):
        np.testing.assert_array_equal(out[row], image[0])
    for row in (6, 7):
        np.testing.assert_array_equal(out[row], image[-1])


def test_padding_replicates_edge_columns_of_portrait():
    image = np.random.default_rng(0).integers(0, 255, (10, 4, 3), dtype=np.uint8)
    out = square(image, 10)
    np.testing.assert_array_equal(out[:, 3:7], image)
    np.testing.assert_array_equal(out[:, :3], np.repeat(image[:, :1], 3, axis=1))
    np.testing.assert_array_equal(out[:, 7:], np.repeat(image[:, -1:], 3, axis=1))


def test_square_crop_is_only_resized():
    image = np.random.default_rng(1).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    expected = cv2.resize(image, (10, 10), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(square(image, 10), expected)


def test_each_hole_takes_its_nearest_valid_value():
    rng = np.random.default_rng(2)
    depth = rng.integers(500, 3000, (12, 15)).astype(np.uint16)
    depth[rng.random(depth.shape) < 0.4] = 0
    depth[0:4, 0:5] = 0  # a larger hole at a corner
    filled = fill_depth_holes(depth)
    valid = np.argwhere(depth > 0)
    assert filled.dtype == np.uint16 and (filled > 0).all()
    for r, c in np.argwhere(depth == 0):
        dist = np.hypot(*(valid - (r, c)).T)
        nearest = valid[dist == dist.min()]
        assert filled[r, c] in {depth[a, b] for a, b in nearest}
    np.testing.assert_array_equal(filled[depth > 0], depth[depth > 0])


def test_jet_near_is_red_far_is_blue():
    colours = jet(np.array([[0, 255]], np.uint8))
    near, far = colours[0, 0], colours[0, 1]
    assert near[0] > 100 and near[2] < 50  # RGB order: red
    assert far[2] > 100 and far[0] < 50  # blue


def test_depth_is_never_wrapped_to_8_bits():
    depth = np.array([[1000, 1256]], np.uint16)  # equal modulo 256
    np.testing.assert_array_equal(normalise_depth(depth), [[0, 255]])


def test_all_missing_depth_is_a_frame_error():
    with pytest.raises(FrameError, match="no valid pixel"):
        colourise_depth(np.zeros((5, 5), np.uint16))


def test_real_frames_load_fill_and_pad(real_frames):
    folder = real_frames / "apple" / "apple_1"
    depth = read_depth(folder / "apple_1_1_1_depthcrop.png")
    assert depth.dtype == np.uint16 and depth.shape == (84, 78) and depth.max() > 255
    filled = fill_depth_holes(depth)
    assert (filled > 0).all()
    assert filled.min() == depth[depth > 0].min() and filled.max() == depth.max()
    rgb, coloured = process_frame(folder / "apple_1_1_1_crop.png",
                                  folder / "apple_1_1_1_depthcrop.png", 148)
    assert rgb.shape == coloured.shape == (148, 148, 3)
    # 84 x 78 -> 148 x 137: 5 and 6 columns padded with copies of the edge columns.
    np.testing.assert_array_equal(rgb[:, :5], np.repeat(rgb[:, 5:6], 5, axis=1))
    np.testing.assert_array_equal(rgb[:, -6:], np.repeat(rgb[:, -7:-6], 6, axis=1))
    crop = cv2.cvtColor(cv2.imread(str(folder / "apple_1_1_1_crop.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(rgb[:, 5:-6], cv2.resize(crop, (137, 148)))
    # The nearest part of the apple is red in the jet image, as in Eitel et al.
    r, c = np.unravel_index(np.argmin(np.where(depth > 0, depth, 65535)), depth.shape)
    assert colourise_depth(depth)[r, c, 0] > 100


def _bad_copy(tiny_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    return sorted(raw.rglob("*_crop.png")), sorted(raw.rglob("*_depthcrop.png"))


@pytest.mark.parametrize(("damage", "reason"), [
    ("no_rgb", "missing RGB file"),
    ("no_depth", "missing depth file"),
    ("corrupt_rgb", "unreadable RGB file"),
    ("corrupt_depth", "unreadable depth file"),
    ("depth_8bit", "expected 16-bit"),
    ("depth_empty", "no valid pixel"),
])
def test_bad_frames_are_skipped_and_listed(tiny_raw, tmp_path, damage, reason):
    crops, depths = _bad_copy(tiny_raw, tmp_path)
    victim_rgb, victim_depth = crops[0], depths[0]
    if damage == "no_rgb":
        victim_rgb.unlink()
    elif damage == "no_depth":
        victim_depth.unlink()
    elif damage == "corrupt_rgb":
        victim_rgb.write_bytes(victim_rgb.read_bytes()[:40])
    elif damage == "corrupt_depth":
        victim_depth.write_bytes(b"not a png")
    elif damage == "depth_8bit":
        cv2.imwrite(str(victim_depth), np.full((20, 20), 200, np.uint8))
    else:
        cv2.imwrite(str(victim_depth), np.zeros((20, 20), np.uint16))
    out = tmp_path / "images.h5"
    report = preprocess_dataset(tmp_path / "raw", out, size=16, workers=1, chunk=4,
                                max_skip_fraction=0.1)
    assert report.frames == len(crops) and report.written == len(crops) - 1
    assert len(report.skipped) == 1 and reason in report.skipped[0]["reason"]
    index = read_images_index(out)
    assert report.skipped[0]["frame"] not in set(index.frame)
    json.dumps(report.to_dict())  # the stage writes it as JSON


def test_too_many_skipped_fails_without_output(tiny_raw, tmp_path):
    _, depths = _bad_copy(tiny_raw, tmp_path)
    for path in depths[:3]:
        path.unlink()
    out = tmp_path / "images.h5"
    with pytest.raises(TooManySkipped, match=r"2 of 18 frames.*max_skip_fraction=0\.1") as err:
        preprocess_dataset(tmp_path / "raw", out, size=16, workers=1, max_skip_fraction=0.1)
    # It stops as soon as the share is exceeded (2 > 0.1 * 18), without writing the file.
    assert not out.exists() and len(err.value.report.skipped) == 2


def test_dataset_in_parallel_matches_serial_and_streams(tiny_raw, tmp_path):
    serial = preprocess_dataset(tiny_raw, tmp_path / "a.h5", size=24, workers=1, chunk=5,
                                source="synthetic")
    preprocess_dataset(tiny_raw, tmp_path / "b.h5", size=24, workers=2, chunk=7,
                       source="synthetic")
    assert serial.written == 18 and not serial.skipped
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        for name in ("rgb", "depth", "label", "frame"):
            np.testing.assert_array_equal(a[name][()], b[name][()])
        assert a.attrs["source"] == "synthetic"
    index = read_images_index(tmp_path / "a.h5")
    assert index.size == 24 and index.categories == sorted(index.categories)
    assert set(index.video) == {1, 2, 4}
    for label, instance in zip(index.label, index.instance, strict=True):
        assert instance.rsplit("_", 1)[0] == index.categories[label]


def _jet_codes() -> np.ndarray:
    colours = jet(np.arange(256, dtype=np.uint8)[None]).reshape(-1, 3).astype(np.int64)
    return (colours[:, 0] << 16) | (colours[:, 1] << 8) | colours[:, 2]


def off_jet_share(image: np.ndarray) -> float:
    """The share of pixels whose colour is none of jet's 256 colours."""
    pixels = image.reshape(-1, 3).astype(np.int64)
    codes = (pixels[:, 0] << 16) | (pixels[:, 1] << 8) | pixels[:, 2]
    return float(np.mean(~np.isin(codes, _jet_codes())))


@pytest.mark.parametrize("size", [148, 32])
def test_every_depth_pixel_is_on_the_jet_scale(real_frames, tiny_raw, size):
    real = real_frames / "apple" / "apple_1"
    pairs = [(real / f"apple_1_1_{k}_crop.png", real / f"apple_1_1_{k}_depthcrop.png")
             for k in (1, 6)]
    pairs += [(f.files["rgb"], f.files["depth"]) for f in index_frames(tiny_raw).frames[:6]]
    for rgb_path, depth_path in pairs:
        _, coloured = process_frame(rgb_path, depth_path, size)
        assert off_jet_share(coloured) == 0.0, depth_path.name


@pytest.mark.parametrize("size", [15, 90])  # area averaging down, bilinear up
def test_depth_is_resized_without_blending_in_holes(size):
    depth = np.zeros((40, 30), np.uint16)
    depth[:, 12:] = 1000 + 10 * np.arange(18)  # a slope beside a hole, as at an object's edge
    out = square_depth(depth, size)
    assert out.shape == (size, size) and out.dtype == np.float32
    valid = out[out > 0]
    assert valid.min() >= 1000 - 1e-3 and valid.max() <= 1170 + 1e-3  # no value towards 0
    assert (out[:, : size // 5] == 0).all()  # the hole is still a hole, filled later
    assert colourise_depth(out).shape == (size, size, 3)


def test_hidden_and_misplaced_files_are_never_frames(tiny_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    clean = index_frames(raw)
    first = clean.frames[0]
    rgb, depth = first.files["rgb"], first.files["depth"]
    category, instance = rgb.parent.parent.name, rgb.parent.name
    root = rgb.parents[2]
    for path in (rgb, depth):  # macOS resource forks, beside the frames and in __MACOSX
        shutil.copy(path, path.with_name("._" + path.name))
        mac = root / "__MACOSX" / category / instance
        mac.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, mac / path.name)
        # what a killed download leaves: a whole category in the hidden staging folder
        staged = root / ".extracting" / "zebra" / "zebra_1"
        staged.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, staged / path.name.replace(instance, "zebra_1"))
        # a frame of one instance in another instance's folder
        other = root / category / f"{category}_2"
        shutil.copy(path, other / path.name.replace(f"{instance}_", f"{category}_9_"))
    index = index_frames(raw)
    assert index.categories == clean.categories
    assert [f.key for f in index.frames] == [f.key for f in clean.frames]
    assert [f.files for f in index.frames] == [f.files for f in clean.frames]
    assert not any(".extracting" in str(p) or "__MACOSX" in str(p) for p in index.ignored)
    report = preprocess_dataset(raw, tmp_path / "images.h5", size=16, workers=1)
    assert report.written == len(clean.frames) and report.categories == clean.categories


def test_categories_come_from_the_frames_written(tiny_raw, tmp_path):
    _bad_copy(tiny_raw, tmp_path)
    index = index_frames(tmp_path / "raw")
    victim = index.categories[0]  # the first: every later label would shift
    for frame in index.frames:
        if frame.name.category == victim:
            frame.files["depth"].unlink()
    out = tmp_path / "images.h5"
    report = preprocess_dataset(tmp_path / "raw", out, size=16, workers=1,
                                max_skip_fraction=0.5)
    images = read_images_index(out)
    assert images.categories == report.categories == index.categories[1:]
    assert report.empty_categories == [victim]
    assert sorted(set(images.label.tolist())) == list(range(len(images.categories)))
    for label, instance in zip(images.label, images.instance, strict=True):
        assert instance.rsplit("_", 1)[0] == images.categories[label]
