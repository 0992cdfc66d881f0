"""VGG16 fine-tuning and fc1 extraction on a tiny generated images file (32 px, CPU).

The fine-tuned checkpoints are made once per module (VGG16 keeps its 138M parameters at any
image size, so each step costs about a second here) and shared by the tests.
"""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from pipeline import engine
from pipeline.__main__ import main as cli
from pipeline.config import ExtractConfig, FinetuneConfig
from pipeline.errors import UserError
from pipeline.features import extract as extract_module
from pipeline.features import finetune as ft
from pipeline.features.extract import ImageBlocks, _pipelined, extract_features
from pipeline.features.vgg import MEAN, STD, load_vgg16, to_input
from pipeline.store import (
    ImagesWriter,
    StoreError,
    TrialSplit,
    read_features,
    write_splits,
)

SIZE = 32
CATEGORIES = ["apple", "cell_phone", "food_can"]
# checkpoint_every=2: no resumable state is written in 2 epochs (1.6 GB each; only the
# resume test needs one)
CONFIG = FinetuneConfig(weights="none", epochs=2, batch_size=8, image_size=SIZE, seed=3,
                        device="cpu", precision="fp32", checkpoint_every=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3 categories x 2 instances x 4 frames; instance 2 held out, 2 frames of each
    training instance labelled."""
    root = tmp_path_factory.mktemp("vgg")
    rng = np.random.default_rng(0)
    rows = [(c, i, k) for c in range(3) for i in (1, 2) for k in range(4)]
    n = len(rows)
    # class-dependent colour so a few steps can learn something
    base = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], np.uint8)
    rgb = np.stack([np.clip(base[c] + rng.integers(-20, 20, (SIZE, SIZE, 3)), 0, 255)
                    for c, _, _ in rows]).astype(np.uint8)
    depth = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    frames = [f"{CATEGORIES[c]}_{i}_1_{k}" for c, i, k in rows]
    with ImagesWriter(root / "images.h5", size=SIZE, categories=CATEGORIES) as w:
        w.append(rgb=rgb, depth=depth, label=[c for c, _, _ in rows], frame=frames,
                 instance=[f"{CATEGORIES[c]}_{i}" for c, i, _ in rows], video=[1] * n,
                 index=[k for _, _, k in rows])
    is_test = np.array([i == 2 for _, i, _ in rows])
    is_labeled = np.array([i == 1 and k < 2 for _, i, k in rows])
    split = TrialSplit(trial=1, is_test=is_test, is_labeled=is_labeled,
                       test_instances=[f"{c}_2" for c in CATEGORIES])
    write_splits(root / "splits.h5", frames=frames, splits=[split])
    return {"root": root, "images": root / "images.h5", "splits": root / "splits.h5",
            "split": split, "rgb": rgb, "depth": depth}


@pytest.fixture(scope="module", autouse=True)
def outside_any_repo(tmp_path_factory):
    """DVCLive runs `dvc init` in a git repository that has no DVC yet (`get_dvc_repo`):
    keep it away from the checkout that runs the tests."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        yield


@pytest.fixture(scope="module")
def tuned(data):
    """rgb through the library, depth through the command line; 2 epochs each."""
    models = data["root"] / "models"
    metrics = ft.finetune(images=data["images"], splits=data["splits"], trial=1,
                          modality="rgb", out=models / "trial-1-rgb", config=CONFIG,
                          cache_dir=data["root"] / "cache")
    params = data["root"] / "params.yaml"
    params.write_text("finetune:\n  weights: none\n  epochs: 2\n  batch_size: 8\n"
                      f"  image_size: {SIZE}\n  seed: 3\n  device: cpu\n  precision: fp32\n"
                      "  checkpoint_every: 2\n"
                      "extract:\n  batch_size: 5\n  device: cpu\n")
    code = cli(["finetune", "--params", str(params), "--images", str(data["images"]),
                "--splits", str(data["splits"]), "--trial", "1", "--modality", "depth",
                "--out", str(models / "trial-1-depth")])
    assert code == 0
    return {"models": models, "metrics": metrics, "params": params}


def test_finetune_of_zero_epochs_writes_its_seeded_initial_network(data, tmp_path):
    """finetune.epochs: 0 (features of the initial network, e.g. ImageNet's as they are):
    no epoch, so no training loss; the same network every time (it failed with an
    IndexError once)."""
    config = dataclasses.replace(CONFIG, epochs=0)
    metrics = ft.finetune(images=data["images"], splits=data["splits"], trial=1,
                          modality="rgb", out=tmp_path / "zero", config=config,
                          cache_dir=data["root"] / "cache")
    assert metrics["epochs"] == 0 and not any(k.startswith("train_") for k in metrics)
    saved = torch.load(tmp_path / "zero" / "model.pt", weights_only=True)["state_dict"]
    again = ft.finetune(images=data["images"], splits=data["splits"], trial=1,
                        modality="rgb", out=tmp_path / "zero-again", config=config,
                        cache_dir=data["root"] / "cache")
    assert again == metrics
    twice = torch.load(tmp_path / "zero-again" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], twice[k]) for k in saved)


def test_finetune_writes_checkpoint_and_metrics(tuned):
    rgb = tuned["models"] / "trial-1-rgb"
    assert (rgb / "model.pt").is_file() and not (rgb / "state.pt").exists()
    saved = torch.load(rgb / "model.pt", weights_only=True)["state_dict"]
    assert {v.dtype for v in saved.values()} == {torch.bfloat16}  # half the disk of float32
    metrics = json.loads((rgb / "metrics.json").read_text())
    assert metrics == tuned["metrics"]
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["n_test"] == 12
    assert metrics["n_labeled"] == 6 and metrics["epochs"] == 2
    live = json.loads((rgb / "live" / "metrics.json").read_text())
    assert live["step"] == 1 and "loss" in live["train"]
    depth = tuned["models"] / "trial-1-depth"
    assert json.loads((depth / "config.json").read_text())["finetune"]["epochs"] == 2
    assert not list(tuned["models"].rglob(".*.partial"))


def test_resume_after_kill_equals_uninterrupted_run(data, tuned, tmp_path, monkeypatch):
    real = ft._train_epoch
    epochs_run = []

    def killed_in_second_epoch(*args, epoch, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt  # as if killed after epoch 1's checkpoint
        epochs_run.append(epoch)
        return real(*args, epoch=epoch, **kwargs)

    monkeypatch.setattr(ft, "_train_epoch", killed_in_second_epoch)
    kwargs = {"images": data["images"], "splits": data["splits"], "trial": 1, "modality": "rgb",
              "out": tmp_path, "config": replace(CONFIG, checkpoint_every=1),
              "cache_dir": tmp_path / "cache"}
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(**kwargs)
    assert (tmp_path / "state.pt").is_file() and not (tmp_path / "model.pt").exists()

    def counted(*args, epoch, **kw):
        epochs_run.append(epoch)
        return real(*args, epoch=epoch, **kw)

    monkeypatch.setattr(ft, "_train_epoch", counted)
    ft.finetune(**kwargs)
    assert epochs_run == [0, 1]  # the resumed run trained epoch 2 only
    resumed = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    straight = torch.load(tuned["models"] / "trial-1-rgb" / "model.pt",
                          weights_only=True)["state_dict"]
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key


def test_finished_run_is_not_repeated_but_changed_settings_are(data, tuned, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(ft, "_train_epoch", fail)
    again = ft.finetune(images=data["images"], splits=data["splits"], trial=1, modality="rgb",
                        out=tuned["models"] / "trial-1-rgb", config=CONFIG,
                        cache_dir=data["root"] / "cache")
    assert again == tuned["metrics"]
    with pytest.raises(AssertionError, match="trained again"):
        ft.finetune(images=data["images"], splits=data["splits"], trial=1, modality="rgb",
                    out=data["root"] / "other", config=replace(CONFIG, lr=1e-4),
                    cache_dir=data["root"] / "cache")


def reference_fc1(model_path, images):
    """torchvision's own VGG16 forward, fc1 read by a hook on classifier[1] (the ReLU)."""
    model = load_vgg16(len(CATEGORIES), torch.load(model_path, weights_only=True)["state_dict"])
    model.eval()
    seen = []
    model.classifier[1].register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    x = TF.normalize(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, MEAN, STD)
    with torch.no_grad():
        model(x)
    return seen[0].numpy()


@pytest.fixture(scope="module")
def features(data, tuned):
    checkpoints = {m: tuned["models"] / f"trial-1-{m}" / "model.pt" for m in ("rgb", "depth")}
    out = data["root"] / "features" / "trial-1.h5"
    extract_features(images=data["images"], splits=data["splits"], trial=1,
                     checkpoints=checkpoints, out=out,
                     config=ExtractConfig(batch_size=5, device="cpu", precision="fp32"))
    return out


def test_features_equal_torchvision_fc1_and_are_nonnegative(data, tuned, features):
    stored = read_features(features)
    assert stored.modalities == ["rgb", "depth"]
    for m in ("rgb", "depth"):
        x = stored.features[m]
        assert x.shape == (24, 4096) and x.dtype == np.float32
        assert (x >= 0).all() and (x > 0).any()
        expected = reference_fc1(tuned["models"] / f"trial-1-{m}" / "model.pt", data[m])
        np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-6)


def test_features_carry_masks_labels_and_provenance(data, features):
    stored = read_features(features)
    np.testing.assert_array_equal(stored.is_test, data["split"].is_test)
    np.testing.assert_array_equal(stored.is_labeled, data["split"].is_labeled)
    np.testing.assert_array_equal(stored.label, np.repeat([0, 1, 2], 8))
    assert stored.frame[0] == "apple_1_1_0" and stored.categories == CATEGORIES
    a = stored.attrs
    assert a["schema"] == "ssmvae-features/1" and a["trial"] == 1 and a["backbone"] == "vgg16"
    assert a["layer"] == "classifier[:2] (fc1 after ReLU)" and a["image_size"] == SIZE
    assert a["weights"] == "none" and a["seed"] == 3 and a["labeled_fraction"] == 0.5
    assert len(a["checkpoint_sha256_rgb"]) == 64 != a["checkpoint_sha256_depth"]


def test_same_checkpoint_gives_identical_file_through_cli(data, tuned, features, tmp_path):
    out = tmp_path / "trial-1.h5"
    code = cli(["extract", "--params", str(tuned["params"]), "--images", str(data["images"]),
                "--splits", str(data["splits"]), "--trial", "1",
                "--checkpoints", str(tuned["models"]), "--out", str(out)])
    assert code == 0
    assert out.read_bytes() == features.read_bytes()
    assert (tmp_path / "trial-1.config.json").is_file()


def _extract(data, tuned, out, images=None, **config):
    checkpoints = {m: tuned["models"] / f"trial-1-{m}" / "model.pt" for m in ("rgb", "depth")}
    config = {"batch_size": 5, "device": "cpu", "precision": "fp32", **config}
    extract_features(images=images or data["images"], splits=data["splits"], trial=1,
                     checkpoints=checkpoints, out=out, config=ExtractConfig(**config))
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_reader_processes_do_not_change_the_file(data, tuned, features, tmp_path, workers):
    """Same rows in every batch and the same conversion, in order: the same bytes (the
    `features` fixture ran with the default, workers: -1, which is 0 on CPU)."""
    out = _extract(data, tuned, tmp_path / "f.h5", workers=workers)
    assert out.read_bytes() == features.read_bytes()


def test_uint8_blocks_normalised_in_the_main_process_give_the_same_input(data):
    """The CUDA route (uint8 blocks, normalised where the network runs), exercised on CPU
    with a network that returns its input: the same batches, in order, as the CPU route."""
    nets = dict.fromkeys(("rgb", "depth"), torch.nn.Flatten())
    runs = []
    for convert in (True, False):
        blocks = ImageBlocks(data["images"], list(nets), n=24, batch_size=5, image_size=SIZE,
                             convert=convert)
        runs.append(list(_pipelined((blocks[i] for i in range(len(blocks))), blocks, nets,
                                    image_size=SIZE, device=torch.device("cpu"), dtype=None)))
    assert [(a, b) for a, b, _ in runs[0]] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 24)]
    for (a, b, x), (c, d, y) in zip(*runs, strict=True):
        assert (a, b) == (c, d) and x.keys() == y.keys()
        for m in x:
            np.testing.assert_array_equal(x[m], y[m])
            expected = to_input(torch.from_numpy(data[m][a:b]), SIZE, torch.device("cpu"))
            np.testing.assert_array_equal(x[m], expected.flatten(1).numpy())


def _corrupt_copy(src, dst):
    """`src` with /rgb stored gzip-compressed in 4-row chunks and the second chunk
    overwritten: the index reads fine, frames 4 to 7 of rgb cannot be decompressed."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        rgb = f["rgb"][()]
        del f["rgb"]
        f.create_dataset("rgb", data=rgb, chunks=(4, *rgb.shape[1:]), compression="gzip")
        info = f["rgb"].id.get_chunk_info(1)
    with open(dst, "r+b") as raw:
        raw.seek(info.byte_offset)
        raw.write(b"\xff" * info.size)
    return dst


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_images_are_a_clear_error_naming_the_file(data, tuned, tmp_path, workers):
    bad = _corrupt_copy(data["images"], tmp_path / "bad.h5")
    out = tmp_path / "f.h5"
    with pytest.raises(StoreError) as err:
        _extract(data, tuned, out, images=bad, workers=workers)
    message = str(err.value)
    assert message.startswith(f"{bad}: cannot read frames 0 to 4 (")  # batch 0-4 holds row 4
    assert "\n" not in message and "Traceback" not in message
    assert not out.exists() and not list(tmp_path.glob(".*.partial"))


def test_missing_or_mismatched_checkpoint_is_a_clear_error(data, tuned, tmp_path, capsys):
    code = cli(["extract", "--params", str(tuned["params"]), "--images", str(data["images"]),
                "--splits", str(data["splits"]), "--trial", "1",
                "--checkpoints", str(tmp_path), "--out", str(tmp_path / "f.h5")])
    assert code == 2
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and "trial-1-rgb" in err
    swapped = {"rgb": tuned["models"] / "trial-1-depth" / "model.pt"}
    with pytest.raises(UserError, match="modality depth"):
        extract_features(images=data["images"], splits=data["splits"], trial=1,
                         checkpoints=swapped, out=tmp_path / "f.h5",
                         config=ExtractConfig(device="cpu"))
    assert not (tmp_path / "f.h5").exists()


def test_iter_rows_streams_masked_rows_in_order(data):
    mask = data["split"].is_test
    with ft.open_images(data["images"]) as f:
        got = list(ft.iter_rows(f, "rgb", mask, batch=5))
    assert [len(r) for r, _ in got] == [5, 5, 2]
    rows = np.concatenate([r for r, _ in got])
    np.testing.assert_array_equal(rows, np.flatnonzero(mask))
    np.testing.assert_array_equal(np.concatenate([b for _, b in got]), data["rgb"][mask])


def test_augment_is_seeded_and_keeps_shape():
    x = torch.rand(3, 3, SIZE, SIZE)
    a = ft.augment(x, torch.Generator().manual_seed(1))
    b = ft.augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_finetune_under_torchrun_equals_one_process(data, tuned, tmp_path):
    """launch.processes=2: two gloo processes, 3 of the 6 labelled frames each per step."""
    out = tmp_path / "trial-1-depth"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "finetune", "--params", str(tuned["params"]),
         "--images", str(data["images"]), "--splits", str(data["splits"]), "--trial", "1",
         "--modality", "depth", "--out", str(out), "--set", "launch.processes=2"],
        cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    assert "launching 2 processes" in done.stderr
    one = torch.load(tuned["models"] / "trial-1-depth" / "model.pt", weights_only=True)
    two = torch.load(out / "model.pt", weights_only=True)
    assert two["meta"] == one["meta"]
    # Equal up to the order of additions: a weight whose gradient is rounding noise gets an
    # Adam step of either sign, so no weight may differ by a whole step (lr) and only a
    # handful (measured: 10 of 134 million) by more than 1e-6.
    # model.pt holds bfloat16: two weights closer than that may still round one bf16 step
    # (|w| * 2**-7 at most) apart, so a step is allowed on top, and counted beyond it.
    lr = FinetuneConfig().lr
    differ = 0
    for name, value in one["state_dict"].items():
        assert value.dtype == two["state_dict"][name].dtype == torch.bfloat16, name
        step = value.float().abs() * 2**-7
        gap = (two["state_dict"][name].float() - value.float()).abs()
        assert (gap < lr + step).all(), name
        differ += int((gap > step + 1e-6).sum())
    assert differ < 1e-6 * sum(v.numel() for v in one["state_dict"].values())
    metrics = [json.loads((d / "metrics.json").read_text())
               for d in (tuned["models"] / "trial-1-depth", out)]
    assert metrics[1]["test_accuracy"] == metrics[0]["test_accuracy"]
    assert metrics[1]["train_loss"] == pytest.approx(metrics[0]["train_loss"], rel=1e-5)


def _extract_cli(data, tuned, checkpoints, out):
    return cli(["extract", "--params", str(tuned["params"]), "--images", str(data["images"]),
                "--splits", str(data["splits"]), "--trial", "1",
                "--checkpoints", str(checkpoints), "--out", str(out)])


def test_checkpoint_yielding_nan_leaves_no_features_file(data, tuned, tmp_path, capsys):
    """Validated before the rename: an invalid file never reaches the final path."""
    models = tmp_path / "models"
    shutil.copytree(tuned["models"], models)
    path = models / "trial-1-rgb" / "model.pt"
    saved = torch.load(path, weights_only=True)
    saved["state_dict"]["classifier.0.bias"][7] = float("nan")  # fc1 unit 7 of every frame
    torch.save(saved, path)
    out = tmp_path / "features" / "trial-1.h5"
    assert _extract_cli(data, tuned, models, out) == 2
    err = capsys.readouterr().err
    assert f"error: {out}: dataset 'features/rgb' holds NaN or inf (first at row 0)" in err
    assert "Traceback" not in err
    assert not out.exists() and not list(out.parent.glob(".*"))
    assert not (tmp_path / "features" / "trial-1.config.json").exists()


def test_corrupt_model_pt_given_to_extract_is_a_clear_error(data, tuned, tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(tuned["models"], models)
    path = models / "trial-1-depth" / "model.pt"
    path.write_bytes(path.read_bytes()[:4096])  # cut short, as by a full disk
    assert _extract_cli(data, tuned, models, tmp_path / "f.h5") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: not a checkpoint of the finetune stage (")
    assert "Traceback" not in err and not (tmp_path / "f.h5").exists()


@pytest.mark.parametrize("name", ["state.pt", "model.pt"])
def test_corrupt_checkpoint_in_a_finetune_folder_is_discarded(data, tuned, tmp_path, caplog,
                                                               name):
    """Not a traceback on every rerun: the damaged file goes, with a message, and the run
    starts afresh."""
    out = tmp_path / "run"
    shutil.copytree(tuned["models"] / "trial-1-rgb", out)
    (out / name).write_bytes(b"PK\x03\x04 damaged")
    settings = {"any": "settings"}
    caplog.set_level("WARNING")
    if name == "state.pt":
        assert engine.Checkpoint(out / name, settings).load(2) is None
    else:
        assert ft._finished(out, settings, epochs=2) is None
    assert not (out / name).exists()
    assert f"{out / name}: unreadable (" in caplog.text
    assert "deleting it and starting afresh" in caplog.text


def test_finetune_writes_nothing_before_its_inputs_are_checked(data, tuned, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["finetune", "--params", str(tuned["params"]), "--modality", "rgb",
            "--out", str(out)]
    code = cli([*base, "--images", str(tmp_path / "missing.h5"),
                "--splits", str(data["splits"]), "--trial", "1"])
    assert code == 2 and "missing.h5: file not found" in capsys.readouterr().err
    code = cli([*base, "--images", str(data["images"]), "--splits", str(data["splits"]),
                "--trial", "7"])
    assert code == 2 and "no trial 7" in capsys.readouterr().err
    assert not out.exists()  # no folder, no code.sha256, no config.json


@pytest.mark.parametrize("stage", ["finetune", "train", "report", "extract"])
def test_out_naming_a_file_or_folder_in_the_way_is_one_line(data, tuned, tmp_path, capsys,
                                                              stage):
    blocker = tmp_path / "taken"
    if stage == "extract":
        blocker.mkdir()  # a folder where the features file should go
    else:
        blocker.write_text("a file where the output folder should go")
    args = {"finetune": ["--images", str(data["images"]), "--splits", str(data["splits"]),
                         "--trial", "1", "--modality", "rgb"],
            "train": ["--features", str(tmp_path / "f.h5"), "--model", "m2"],
            "report": [],
            "extract": ["--images", str(data["images"]), "--splits", str(data["splits"]),
                        "--trial", "1", "--checkpoints", str(tuned["models"])]}[stage]
    code = cli([stage, "--params", str(tuned["params"]), *args, "--out", str(blocker)])
    err = capsys.readouterr().err
    assert code == 2, err
    expected = "is a folder; give a file path" if stage == "extract" else \
        "exists and is not a folder; give a folder path"
    assert err == f"error: --out {blocker}: {expected}\n"


@pytest.mark.parametrize(("slow_s", "warned"), [(0.0, True), (1e9, False)])
def test_a_long_extraction_says_so_after_its_first_batch(data, tuned, tmp_path, caplog,
                                                         monkeypatch, slow_s, warned):
    """On a CPU at the paper's size extraction takes hours per trial: one warning line with
    the estimate, after the first batch, not after the hours."""
    monkeypatch.setattr(extract_module, "SLOW_S", slow_s)
    checkpoints = {m: tuned["models"] / f"trial-1-{m}" / "model.pt" for m in ("rgb", "depth")}
    with caplog.at_level("WARNING", logger="pipeline.features.extract"):
        extract_features(images=data["images"], splits=data["splits"], trial=1,
                         checkpoints=checkpoints, out=tmp_path / "f.h5",
                         config=ExtractConfig(batch_size=5, device="cpu", precision="fp32"))
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if warned:
        assert len(lines) == 1, lines
        assert re.fullmatch(r"extract trial 1 on cpu: about [\d.]+ h for 24 frames at "
                            r"[\d.]+ frames/s \(the first 5\); a CUDA GPU takes minutes",
                            lines[0]), lines
    else:
        assert lines == []
