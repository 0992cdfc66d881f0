"""HDF5 schemas: round trips, atomic writes, and a clear error for each broken file."""

import h5py
import numpy as np
import pytest

from pipeline.__main__ import main as cli
from pipeline.store import (
    FeatureSet,
    ImagesWriter,
    StoreError,
    TrialSplit,
    read_features,
    read_images_index,
    read_split,
    validate_features,
    write_features,
    write_splits,
)


def feature_set(n: int = 20, seed: int = 0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    is_test = np.zeros(n, bool)
    is_test[-5:] = True
    is_labeled = np.zeros(n, bool)
    is_labeled[:4] = True
    return FeatureSet(
        features={"rgb": rng.random((n, 6), dtype=np.float32),
                  "depth": rng.random((n, 4), dtype=np.float32)},
        label=rng.integers(0, 3, n), is_test=is_test, is_labeled=is_labeled,
        categories=["apple", "cell_phone", "cap"], frame=[f"apple_1_1_{i}" for i in range(n)],
        attrs={"trial": 1, "backbone": "vgg16"},
    )


def test_features_round_trip(tmp_path):
    data = feature_set()
    path = tmp_path / "trial-1.h5"
    write_features(path, data)
    back = read_features(path)
    assert back.modalities == ["rgb", "depth"]
    for m in data.features:
        np.testing.assert_array_equal(back.features[m], data.features[m])
        assert back.features[m].dtype == np.float32
    np.testing.assert_array_equal(back.label, data.label)
    assert back.label.dtype == np.int64
    np.testing.assert_array_equal(back.is_labeled, data.is_labeled)
    assert list(back.frame) == list(data.frame)
    assert back.categories == data.categories and back.attrs["trial"] == 1
    assert not list(tmp_path.glob(".*partial"))


def test_same_data_gives_identical_bytes(tmp_path):
    write_features(tmp_path / "a.h5", feature_set())
    write_features(tmp_path / "b.h5", feature_set())
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()


def corrupt(path, action):
    with h5py.File(path, "a") as f:
        action(f)


@pytest.mark.parametrize(("action", "message"), [
    (lambda f: f.attrs.__setitem__("schema", "other/2"), "expected schema 'ssmvae-features/1'"),
    (lambda f: f.__delitem__("features/depth"), "missing dataset 'features/depth'"),
    (lambda f: f.__delitem__("is_labeled"), "missing dataset 'is_labeled'"),
    (lambda f: f["features/rgb"].__setitem__((3, 2), np.nan), "NaN or inf (first at row 3)"),
    (lambda f: f["features/depth"].__setitem__((7, 0), np.inf), "NaN or inf (first at row 7)"),
    (lambda f: f["is_labeled"].__setitem__(19, True), "test examples are marked labelled"),
    (lambda f: f["is_labeled"].__setitem__(slice(None), False), "no labelled training example"),
    (lambda f: f["label"].__setitem__(0, 3), "/label values must lie in [0, 3)"),
])
def test_broken_features_file_is_a_clear_error(tmp_path, action, message):
    path = tmp_path / "bad.h5"
    write_features(path, feature_set())
    corrupt(path, action)
    with pytest.raises(StoreError) as err:
        read_features(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_mismatched_lengths(tmp_path):
    path = tmp_path / "bad.h5"
    write_features(path, feature_set())
    with h5py.File(path, "a") as f:
        del f["is_test"]
        f["is_test"] = np.zeros(7, bool)
    with pytest.raises(StoreError, match="'is_test' has 7 rows, expected 20"):
        validate_features(path)


def test_not_hdf5_and_missing(tmp_path):
    (tmp_path / "x.h5").write_text("hello")
    with pytest.raises(StoreError, match="not a readable HDF5 file"):
        read_features(tmp_path / "x.h5")
    with pytest.raises(StoreError, match="file not found"):
        read_features(tmp_path / "none.h5")


def test_failed_write_leaves_old_file_and_no_partial(tmp_path):
    path = tmp_path / "trial-1.h5"
    write_features(path, feature_set(seed=1))
    before = path.read_bytes()
    with pytest.raises(RuntimeError), ImagesWriter(path, size=4, categories=["a"]) as writer:
        writer.append(rgb=np.zeros((1, 4, 4, 3), np.uint8), depth=np.zeros((1, 4, 4, 3), np.uint8),
                      label=[0], frame=["a_1_1_1"], instance=["a_1"], video=[1], index=[1])
        raise RuntimeError("killed")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trial-1.h5"]


def test_images_round_trip_in_chunks(tmp_path):
    path = tmp_path / "images.h5"
    rng = np.random.default_rng(0)
    with ImagesWriter(path, size=8, categories=["apple", "cell_phone"],
                      attrs={"source": "synthetic"}) as writer:
        for start in (0, 3):
            rgb = rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
            writer.append(rgb=rgb, depth=rgb[:, ::-1], label=[0, 1, 1],
                          frame=[f"cell_phone_1_2_{start + i}" for i in range(3)],
                          instance=["cell_phone_1"] * 3, video=[2] * 3,
                          index=[start, start + 1, start + 2])
    index = read_images_index(path)
    assert len(index) == 6 and index.size == 8 and index.categories == ["apple", "cell_phone"]
    assert index.frame[4] == "cell_phone_1_2_4" and index.attrs["source"] == "synthetic"


def test_splits_round_trip_and_alignment(tmp_path):
    frames = [f"a_1_1_{i}" for i in range(6)]
    is_test = np.array([0, 0, 0, 0, 1, 1], bool)
    is_labeled = np.array([1, 0, 0, 0, 0, 0], bool)
    path = tmp_path / "splits.h5"
    write_splits(path, frames=frames, splits=[TrialSplit(3, is_test, is_labeled, ["a_2"])])
    split = read_split(path, 3, frames)
    np.testing.assert_array_equal(split.is_test, is_test)
    assert split.test_instances == ["a_2"]
    with pytest.raises(StoreError, match="no trial 4; the file holds trials 3"):
        read_split(path, 4)
    with pytest.raises(StoreError, match="do not match the images file"):
        read_split(path, 3, frames[::-1])


def test_inspect_command(tmp_path, capsys):
    path = tmp_path / "trial-1.h5"
    write_features(path, feature_set())
    assert cli(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ssmvae-features/1" in out and "features/rgb: float32 (20, 6)" in out
    assert "labelled 4" in out and "test 5" in out
    assert cli(["inspect", str(tmp_path / "missing.h5")]) == 2
    assert "file not found" in capsys.readouterr().err


def images_file(path, n: int = 4):
    with ImagesWriter(path, size=4, categories=["a", "b"]) as writer:
        writer.append(rgb=np.zeros((n, 4, 4, 3), np.uint8), depth=np.zeros((n, 4, 4, 3), np.uint8),
                      label=[i % 2 for i in range(n)], frame=[f"a_1_1_{i}" for i in range(n)],
                      instance=["a_1"] * n, video=[1] * n, index=list(range(n)))
    return path


def replace_dataset(path, name, value):
    with h5py.File(path, "a") as f:
        del f[name]
        f[name] = value


def one_line_error(capsys, argv) -> str:
    code = cli(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("name", ["frame", "instance"])
def test_integer_names_in_an_images_file_are_a_clear_error(tmp_path, capsys, name):
    path = images_file(tmp_path / "images.h5")
    replace_dataset(path, name, np.arange(4))
    with pytest.raises(StoreError, match=rf"images\.h5: dataset '{name}' must hold strings, "
                                         r"got int64"):
        read_images_index(path)
    assert f"dataset '{name}' must hold strings" in one_line_error(capsys, ["inspect", str(path)])
    (tmp_path / "params.yaml").write_text("profile: paper\n")
    err = one_line_error(capsys, ["split", "--params", str(tmp_path / "params.yaml"),
                                  "--images", str(path), "--out", str(tmp_path / "s.h5")])
    assert f"images.h5: dataset '{name}' must hold strings" in err
    assert not (tmp_path / "s.h5").exists()


def test_integer_frames_in_a_splits_file_are_a_clear_error(tmp_path, capsys):
    path = tmp_path / "splits.h5"
    write_splits(path, frames=["a_1_1_1", "a_2_1_1"],
                 splits=[TrialSplit(1, np.array([1, 0], bool), np.array([0, 1], bool), ["a_1"])])
    replace_dataset(path, "frame", np.arange(2))
    with pytest.raises(StoreError, match=r"splits\.h5: dataset 'frame' must hold strings"):
        read_split(path, 1)
    assert "splits.h5: dataset 'frame'" in one_line_error(capsys, ["inspect", str(path)])


def half_written(path):
    """The file's second half zeroed: its length is right, its metadata is not all there."""
    data = bytearray(path.read_bytes())
    half = len(data) // 2
    data[half:] = bytes(len(data) - half)
    path.write_bytes(bytes(data))
    return path


def test_half_written_files_are_a_clear_error(tmp_path, capsys):
    images = half_written(images_file(tmp_path / "images.h5"))
    features = tmp_path / "trial-1.h5"
    write_features(features, feature_set())
    half_written(features)
    splits = tmp_path / "splits.h5"
    write_splits(splits, frames=["a_1_1_1", "a_2_1_1"],
                 splits=[TrialSplit(1, np.array([1, 0], bool), np.array([0, 1], bool), ["a_1"])])
    half_written(splits)
    for path in (images, features, splits):
        err = one_line_error(capsys, ["inspect", str(path)])
        assert f"{path}: damaged or half-written HDF5 file" in err
    with pytest.raises(StoreError, match=r"trial-1\.h5: damaged or half-written"):
        read_features(features)
    (tmp_path / "params.yaml").write_text("profile: paper\n")
    err = one_line_error(capsys, ["split", "--params", str(tmp_path / "params.yaml"),
                                  "--images", str(images), "--out", str(tmp_path / "s.h5")])
    assert "images.h5: damaged or half-written" in err


def test_float_labels_are_refused_not_truncated(tmp_path):
    path = tmp_path / "trial-1.h5"
    data = feature_set()
    write_features(path, data)
    replace_dataset(path, "label", data.label + 0.7)  # 2.7 would be read as class 2
    with pytest.raises(StoreError, match=r"trial-1\.h5: dataset 'label' must be integer, "
                                         r"got float64"):
        read_features(path)
    images = images_file(tmp_path / "images.h5")
    replace_dataset(images, "label", np.array([0.0, 1.5, 0.0, 1.0]))
    with pytest.raises(StoreError, match="dataset 'label' must be integer"):
        read_images_index(images)
