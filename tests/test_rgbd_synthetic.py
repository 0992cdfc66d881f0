"""The synthetic set is in the exact Washington layout, deterministic, with Kinect-like depth."""

import zipfile

import cv2
import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.rgbd.layout import index_frames, parse_name, split_instance
from pipeline.rgbd.splits import read_trials
from pipeline.rgbd.synthetic import CATEGORIES, SyntheticSpec, generate, paper_scale
from tests.conftest import TINY


@pytest.mark.parametrize(("name", "expected"), [
    ("cell_phone_1_2_41_crop.png", ("cell_phone", 1, 2, 41, "crop", "cell_phone_1_2_41")),
    ("apple_1_1_6_depthcrop.png", ("apple", 1, 1, 6, "depthcrop", "apple_1_1_6")),
    ("food_can_14_4_186_maskcrop.png", ("food_can", 14, 4, 186, "maskcrop", "food_can_14_4_186")),
    ("a_2_1_1_1_loc.txt", ("a_2", 1, 1, 1, "loc", "a_2_1_1_1")),
])
def test_names_are_parsed_from_the_right(name, expected):
    n = parse_name(name)
    assert (n.category, n.instance_number, n.video, n.index, n.kind, n.frame) == expected


@pytest.mark.parametrize("name", ["apple_1_1_crop.png", "apple_1_1_1_crop.txt", "README.md",
                                  "apple_1_1_1_rgb.png"])
def test_other_files_are_not_frames(name):
    assert parse_name(name) is None


def test_instance_names():
    assert split_instance("cell_phone_12") == ("cell_phone", 12)
    with pytest.raises(UserError, match="expected <category>_<number>"):
        split_instance("cell_phone")


def test_real_fixture_frames_are_indexed(real_frames):
    index = index_frames(real_frames)
    assert [f.name.frame for f in index.frames] == ["apple_1_1_1", "apple_1_1_6"]
    assert set(index.frames[0].files) == {"rgb", "depth", "mask", "loc"}
    assert index.categories == ["apple"]


def test_layout_matches_washington(tiny_archive, tiny_raw):
    archive, _ = tiny_archive
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
    assert all(n.startswith("rgbd-dataset_eval/") for n in names)
    assert "rgbd-dataset_eval/soda_can/soda_can_1/soda_can_1_4_1_depthcrop.png" in names
    index = index_frames(tiny_raw)
    assert index.categories == ["lime", "soda_can", "tomato"]
    assert len(index.frames) == 3 * 2 * 3 and not index.ignored
    assert {f.name.video for f in index.frames} == {1, 2, 4}
    for frame in index.frames:
        assert set(frame.files) == {"rgb", "depth", "mask", "loc"}
        folder = frame.files["rgb"].parent
        assert folder.name == frame.name.instance and folder.parent.name == frame.name.category
        x, y = (int(v) for v in frame.files["loc"].read_text().strip().split(","))
        assert 0 <= x < 640 and 0 <= y < 480


def test_depth_is_16_bit_millimetres_with_holes(tiny_raw):
    shapes = set()
    for frame in index_frames(tiny_raw).frames:
        depth = cv2.imread(str(frame.files["depth"]), cv2.IMREAD_UNCHANGED)
        rgb = cv2.imread(str(frame.files["rgb"]), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(frame.files["mask"]), cv2.IMREAD_UNCHANGED)
        assert depth.dtype == np.uint16 and rgb.dtype == np.uint8 and rgb.ndim == 3
        assert depth.shape == rgb.shape[:2] == mask.shape
        valid = depth[depth > 0]
        assert 0.005 < (depth == 0).mean() < 0.5  # drop-outs and edge holes, like a Kinect
        assert valid.min() > 300 and valid.max() < 2000  # a table-top scene in millimetres
        assert 0 < (mask > 0).mean() < 1
        shapes.add(depth.shape)
    aspects = {round(h / w, 1) for h, w in shapes}
    assert len(shapes) > 5 and len(aspects) > 3  # crops of varying size and aspect ratio


def test_same_seed_same_bytes_and_trials_format(tiny_archive, tmp_path):
    archive, trials = tiny_archive
    generate(TINY, tmp_path / "again.zip", tmp_path / "ids.txt")
    assert (tmp_path / "again.zip").read_bytes() == archive.read_bytes()
    assert (tmp_path / "ids.txt").read_text() == trials.read_text()
    assert trials.read_text().startswith("****** trial 1 ******\n")
    parsed = read_trials(trials)
    assert sorted(parsed) == [1, 2]
    for instances in parsed.values():
        assert sorted(split_instance(i)[0] for i in instances) == ["lime", "soda_can", "tomato"]


def test_spec_is_checked():
    with pytest.raises(UserError, match=r"download\.synthetic_categories"):
        SyntheticSpec(categories=len(CATEGORIES) + 1).check()


def test_paper_scale_has_the_evaluation_subsets_counts():
    spec = paper_scale()
    spec.check()
    counts = spec.instance_counts()
    assert len(counts) == 51 and sum(counts) == 300 and min(counts) >= 3 and max(counts) <= 10
    frames = spec.frame_counts()
    assert len(frames) == 3 * 300 and sum(frames) == 41_877 and min(frames) >= 1
    assert len(set(frames)) > 10  # videos of uneven length, as in the real set
    assert len({c.name for c in CATEGORIES}) == len(CATEGORIES) >= 51
    assert all(parse_name(f"{c.name}_1_1_1_crop.png").category == c.name for c in CATEGORIES)


def test_zoomed_crops_spread_and_workers_give_the_same_bytes(tmp_path):
    spec = SyntheticSpec(seed=5, categories=12, instances=2, frames=1, trials=2,
                         total_instances=36, total_frames=120, zoom=(0.6, 3.0),
                         pixel_mm=5.0)
    generate(spec, tmp_path / "a.zip", tmp_path / "a.txt")
    generate(spec, tmp_path / "b.zip", tmp_path / "b.txt", workers=2)
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        names = zf.namelist()
        sides = [max(cv2.imdecode(np.frombuffer(zf.read(n), np.uint8), -1).shape[:2])
                 for n in names if n.endswith("_crop.png")]
        depth = [cv2.imdecode(np.frombuffer(zf.read(n), np.uint8), -1)
                 for n in names if n.endswith("_depthcrop.png")]
    assert len(sides) == 120 and min(sides) < 80 and max(sides) > 200
    assert all(d.dtype == np.uint16 and (d == 0).any() for d in depth)  # holes kept
    trials = read_trials(tmp_path / "a.txt")
    instances = {n.split("/")[2] for n in names if n.count("/") >= 3}
    assert all(len(held) == 12 and set(held) <= instances for held in trials.values())
