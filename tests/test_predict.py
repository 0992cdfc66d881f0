"""`python -m pipeline predict`: new frames through the trained pipeline.

One tiny pipeline is run once per module through the stage commands (synthetic frames at 32 px,
VGG16 from random weights for one epoch, every model for 2 epochs on trial 1); then the
trial's test frames must give exactly the features of the features file from their image
files, and exactly the accuracies of each model's `metrics.json`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from pipeline.__main__ import main as cli
from pipeline.classical import CLASSICAL
from pipeline.classical.experiment import FORMAT as CLASSICAL_FORMAT
from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.predict import (
    Predictor,
    _classify,
    _features,
    collect,
    load_predictor,
    predict_frames,
    run,
)
from pipeline.rgbd.layout import index_frames
from pipeline.store import read_features
from pipeline.vae import MODELS
from pipeline.vae.data import prepare
from pipeline.vae.evaluate import predict
from pipeline.vae.experiment import train_and_evaluate
from pipeline.vae.modes import eval_mode
from pipeline.vae.saved import SavedModelError, choose, load_trained

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "download": {"source": "synthetic", "synthetic_categories": 3, "synthetic_instances": 2,
                 "synthetic_frames": 2},
    "preprocess": {"size": 40, "workers": 1},
    "split": {"trials": [1], "labeled_fraction": 0.3},
    "finetune": {"weights": "none", "epochs": 1, "image_size": 32, "batch_size": 8,
                 "checkpoint_every": 2},
    "extract": {"device": "cpu"},
    "train": {"epochs": 2, "hidden": 16, "a_dim": 8, "z_dim": 8, "iterative_steps": 3,
              "batch_size": 16, "labeled_batch_size": 8, "device": "cpu"},
    "classical": {}, "report": {}, "launch": {},
}


def _run(*argv: str) -> None:
    assert cli(list(argv)) == 0, argv


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder after download, preprocess, split, finetune, extract and train."""
    root = tmp_path_factory.mktemp("project")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"], params["trials"] = "demo", [1]
    params["profiles"]["demo"] = TINY
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # the stages' default paths; DVCLive stays out of the checkout
        _run("download", "--out", "data/raw", "--cache", "data/downloads", "--no-progress")
        _run("preprocess", "--raw", "data/raw", "--out", "data/images.h5", "--no-progress")
        _run("split", "--images", "data/images.h5", "--trials-file",
             "data/raw/testinstance_ids.txt", "--out", "data/splits.h5")
        for m in ("rgb", "depth"):
            _run("finetune", "--trial", "1", "--modality", m, "--out", f"models/vgg16/trial-1-{m}")
        _run("extract", "--trial", "1")
        cfg = load_config("params.yaml").train
        for name in MODELS:  # without DVCLive's files, which cost seconds per epoch
            train_and_evaluate(Path("data/features/trial-1.h5"), name, cfg,
                               Path(f"models/vae/{name}/trial-1"), progress=False, live=False)
    return root


def _test_frames(project: Path) -> tuple[Path, list[str]]:
    """A folder with the trial's test frames (RGB and depth), and their categories in order."""
    data = read_features(project / "data/features/trial-1.h5")
    test = set(data.frame[data.is_test].tolist())
    folder = project / "test-frames"
    if not folder.is_dir():
        for frame in index_frames(project / "data/raw").frames:
            if frame.name.frame in test:
                for kind in ("rgb", "depth"):
                    (folder / frame.name.instance).mkdir(parents=True, exist_ok=True)
                    shutil.copy(frame.files[kind], folder / frame.name.instance)
    truth = [data.categories[k] for k in data.label[data.is_test]]
    return folder, truth


@pytest.fixture(scope="module")
def networks(project) -> Predictor:
    """The trial's two VGG16 networks, loaded once (with the MLP's classifier)."""
    return load_predictor(project / "models/vae/mlp/trial-1", ("rgb", "depth"))


def _predictor(project: Path, networks: Predictor, name: str) -> Predictor:
    classifier = load_trained(project / "models/vae" / name / "trial-1")
    return dataclasses.replace(networks, classifier=classifier)


def test_images_give_exactly_the_features_files_rows(project, networks):
    """Decoding, preprocessing and VGG16 as the pipeline does: the test frames' image files
    give the very fc1 features the extract stage wrote for them."""
    folder, _ = _test_frames(project)
    data = read_features(project / "data/features/trial-1.h5")
    frames, errors = collect(folder, folder)
    errors_seen: list = []
    rows = _features(networks, frames, ("rgb", "depth"), errors_seen)
    assert not errors and not errors_seen
    assert [frame.name for frame, _ in rows] == data.frame[data.is_test].tolist()
    for m in ("rgb", "depth"):
        np.testing.assert_array_equal(np.stack([f[m] for _, f in rows]),
                                      data.features[m][data.is_test])


@pytest.mark.parametrize("name", list(MODELS))
def test_test_rows_give_exactly_the_accuracies_of_metrics_json(project, networks, name):
    """Every input mode of every model on the features file's test rows: the accuracy
    metrics.json holds, and per row the class evaluate.predict gives; then the same from
    the image files for the depth alone (the method predict picks by default)."""
    folder, truth = _test_frames(project)
    model = project / "models/vae" / name / "trial-1"
    assert (model / "model.pt").is_file() and not list(model.glob(".*partial"))
    metrics = json.loads((model / "metrics.json").read_text())
    predictor = _predictor(project, networks, name)
    classifier = predictor.classifier
    stored = read_features(project / "data/features/trial-1.h5")
    data = prepare(stored, classifier.cfg.likelihood, torch.device("cpu"))
    assert len(classifier.evaluations()) == len(MODELS[name].evaluations(["rgb", "depth"]))
    labels = stored.label[stored.is_test]
    for evaluation in classifier.evaluations():
        x = {m: stored.features[m][stored.is_test] for m in evaluation.inputs}
        classes, probabilities = classifier.classify(x, evaluation)
        expected = metrics["accuracy_by_method"][evaluation.method][evaluation.key]
        assert np.mean(classes == labels) == expected, evaluation
        with eval_mode(classifier.model):  # evaluate's own path, on the file's rows
            log_probs = predict(classifier.model, data.test.x, evaluation, data.scaler,
                                classifier.cfg).float()
        np.testing.assert_array_equal(classes, log_probs.argmax(-1).numpy())
        np.testing.assert_array_equal(probabilities, log_probs.exp().numpy())
        np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(probabilities.argmax(1), classes)
    evaluation = choose(classifier, ("depth",))
    frames, errors = collect(None, folder)
    predictions, bad = predict_frames(predictor, frames, evaluation, top=3, batch_size=7)
    assert not errors and not bad and len(predictions) == len(truth) > 0
    accuracy = np.mean([p.category == t for p, t in zip(predictions, truth, strict=True)])
    assert accuracy == metrics["accuracy_by_method"][evaluation.method]["depth"]
    for p in predictions:
        probabilities = [q for _, q in p.top]
        assert p.top[0][0] == p.category and probabilities == sorted(probabilities)[::-1]


def test_default_method_per_model_and_inputs(project):
    """Joint for both, the unimodal encoder (-kl), iterative sampling (SS-HMVAE), zero-fill
    (SS-MVAE), the own input (M2, SDGM, MLP); M2 has no joint classifier."""
    expected = {"ss_hmvae_kl": "unimodal", "ss_hmvae": "iterative", "ss_mvae": "zero_fill",
                "m2": "joint", "sdgm": "joint", "mlp": "joint"}
    for name, method in expected.items():
        classifier = load_trained(project / "models/vae" / name / "trial-1")
        assert choose(classifier, ("depth",)).method == method
        assert choose(classifier, ("rgb",)).key == "rgb"
        if name not in ("m2", "sdgm"):
            assert choose(classifier, ("rgb", "depth")).method == "joint"
    with pytest.raises(UserError, match="'m2' cannot classify rgb\\+depth"):
        choose(load_trained(project / "models/vae/m2/trial-1"), ("rgb", "depth"))



def _real_pairs(real_frames: Path) -> Path:
    return real_frames / "apple" / "apple_1"


def test_real_frames_through_every_model_and_input(project, networks, real_frames):
    """The two real Washington frames (16-bit depth) through every model, every input it
    takes, with the method predict picks by default (their fc1 features computed once)."""
    folder = _real_pairs(real_frames)
    frames, errors = collect(folder, folder)
    rows = _features(networks, frames, ("rgb", "depth"), errors)
    assert not errors and [frame.name for frame, _ in rows] == ["apple_1_1_1", "apple_1_1_6"]
    for name in MODELS:
        predictor = _predictor(project, networks, name)
        for inputs in (("rgb",), ("depth",), ("rgb", "depth")):
            if name in ("m2", "sdgm") and len(inputs) == 2:
                continue  # one classifier per modality, none for both (tested above)
            evaluation = choose(predictor.classifier, inputs)
            predictions = _classify(predictor, rows, evaluation, 2)
            assert [p.name for p in predictions] == ["apple_1_1_1", "apple_1_1_6"]
            for p in predictions:
                assert len(p.top) == 2 and p.category == p.top[0][0]
                assert p.category in predictor.classifier.categories
                assert 0 < p.top[1][1] <= p.top[0][1] <= 1


def test_cli_single_pair_prints_a_table_and_writes_json(project, real_frames, tmp_path, capsys):
    folder = _real_pairs(real_frames)
    out = tmp_path / "predictions.json"
    code = cli(["predict", "--model", str(project / "models/vae/ss_hmvae_kl/trial-1"),
                "--rgb", str(folder / "apple_1_1_6_crop.png"),
                "--depth", str(folder / "apple_1_1_6_depthcrop.png"), "--top", "2",
                "--out", str(out), "--vgg16", str(project / "models/vgg16")])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    saved = json.loads(out.read_text())
    assert saved["input"] == "rgb+depth" and saved["method"] == "joint" and not saved["errors"]
    (row,) = saved["predictions"]
    assert row["frame"] == "apple_1_1_6" and len(row["top"]) == 2
    assert row["files"]["depth"] == str(folder / "apple_1_1_6_depthcrop.png")
    line = printed.out.splitlines()[1]
    assert line.startswith("apple_1_1_6 ") and row["top"][0]["category"] in line


def test_bad_files_are_listed_and_the_others_predicted(project, real_frames, tmp_path, capsys):
    real = _real_pairs(real_frames)
    folder = tmp_path / "frames"
    folder.mkdir()
    for kind in ("crop", "depthcrop"):
        shutil.copy(real / f"apple_1_1_1_{kind}.png", folder / f"apple_1_1_1_{kind}.png")
    (folder / "bad_1_1_1_crop.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    shutil.copy(real / "apple_1_1_1_depthcrop.png", folder / "bad_1_1_1_depthcrop.png")
    shutil.copy(real / "apple_1_1_1_crop.png", folder / "eight_1_1_1_crop.png")
    depth = cv2.imread(str(real / "apple_1_1_1_depthcrop.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(folder / "eight_1_1_1_depthcrop.png"), (depth // 16).astype(np.uint8))
    shutil.copy(real / "apple_1_1_6_crop.png", folder / "lonely_1_1_1_crop.png")
    out = tmp_path / "p.json"
    code = cli(["predict", "--model", str(project / "models/vae/mlp/trial-1"), "--rgb",
                str(folder), "--depth", str(folder), "--out", str(out), "--no-progress"])
    printed = capsys.readouterr()
    assert code == 2
    saved = json.loads(out.read_text())
    assert [p["frame"] for p in saved["predictions"]] == ["apple_1_1_1"]
    assert "apple_1_1_1" in printed.out
    errors = {Path(e["file"]).name: e["error"] for e in saved["errors"]}
    assert set(errors) == {"bad_1_1_1_crop.png", "bad_1_1_1_depthcrop.png",
                           "eight_1_1_1_crop.png", "eight_1_1_1_depthcrop.png",
                           "lonely_1_1_1_crop.png"}
    assert "unreadable" in errors["bad_1_1_1_crop.png"]
    assert "uint8, expected 16-bit" in errors["eight_1_1_1_depthcrop.png"]
    assert "unpaired: no lonely_1_1_1_depthcrop.png" in errors["lonely_1_1_1_crop.png"]
    # the good file of a frame whose partner was refused is listed, not silently dropped
    assert errors["eight_1_1_1_crop.png"] == (
        f"not used: frame eight_1_1_1 cannot be predicted from rgb+depth "
        f"({folder / 'eight_1_1_1_depthcrop.png'} was refused)")
    assert errors["bad_1_1_1_depthcrop.png"].startswith("not used: frame bad_1_1_1 ")
    lines = [x for x in printed.err.splitlines() if x.startswith("error: ")]
    assert len(lines) == 5 and all(str(folder) in x for x in lines)


def test_missing_file_is_a_one_line_error(project, tmp_path, capsys):
    code = cli(["predict", "--model", str(project / "models/vae/mlp/trial-1"),
                "--rgb", str(tmp_path / "nowhere_crop.png"), "--out", str(tmp_path / "p.json")])
    err = capsys.readouterr().err
    assert code == 2 and err == f"error: --rgb {tmp_path / 'nowhere_crop.png'}: not found\n"
    assert not (tmp_path / "p.json").exists()


def _copy_model(project: Path, tmp_path: Path, edit) -> Path:
    folder = tmp_path / "models/vae/mlp/trial-1"
    folder.mkdir(parents=True)
    state = torch.load(project / "models/vae/mlp/trial-1/model.pt", weights_only=True)
    edit(state)
    torch.save(state, folder / "model.pt")
    return folder


def test_model_folder_of_other_code_is_a_clear_error(project, tmp_path):
    with pytest.raises(SavedModelError, match=f"{tmp_path / 'model.pt'}: not found"):
        load_trained(tmp_path)
    old = _copy_model(project, tmp_path / "a", lambda s: s.update(format="ssmvae-model/0"))
    with pytest.raises(SavedModelError, match="format 'ssmvae-model/0', expected"):
        load_trained(old)
    other = _copy_model(project, tmp_path / "b", lambda s: s["config"].update(hidden=32))
    with pytest.raises(SavedModelError, match=f"{other / 'model.pt'}: does not fit"):
        load_trained(other)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.pt").write_bytes(b"junk")
    with pytest.raises(SavedModelError, match="not a model file of the train stage"):
        load_trained(tmp_path / "junk")


def test_classical_model_is_refused_in_one_line(tmp_path, capsys):
    """A classical model's folder (co-training, label spreading) gets one line naming the
    file and saying predict does not support it, not "train the model again"; exit 2."""
    for name in CLASSICAL:
        folder = tmp_path / name / "trial-1"
        folder.mkdir(parents=True)
        torch.save({"format": CLASSICAL_FORMAT, "model": name,
                    "rgb_rows": torch.arange(3)}, folder / "model.pt")
        cv2.imwrite(str(tmp_path / "x_crop.png"), np.zeros((8, 8, 3), np.uint8))
        code = cli(["predict", "--model", str(folder), "--rgb", str(tmp_path / "x_crop.png"),
                    "--out", str(tmp_path / "p.json")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"error: {folder / 'model.pt'}: {name} is a classical model, "
                              "which predict does not support") and "again" not in err


def test_unknown_model_lists_the_models_and_the_classical_ones(project, tmp_path):
    folder = _copy_model(project, tmp_path, lambda s: s.update(model="m3"))
    with pytest.raises(SavedModelError, match="model 'm3' is unknown") as raised:
        load_trained(folder)
    assert all(name in str(raised.value) for name in [*MODELS, *CLASSICAL])


def test_old_model_without_the_constant_dimensions_record_loads(project, tmp_path):
    """A model.pt written before the constant-dimension record loads and classifies as it
    was trained and evaluated: with no dimension fixed."""
    def drop(state):
        del state["scaler"]["constant"], state["scaler"]["constant_value"]

    old = load_trained(_copy_model(project, tmp_path, drop))
    new = load_trained(project / "models/vae/mlp/trial-1")
    data = read_features(project / "data/features/trial-1.h5")
    x = {m: data.features[m][data.is_test] for m in data.modalities}
    for m in data.modalities:
        np.testing.assert_array_equal(old.scaler.transform(m, x[m]),
                                      ((x[m] - new.scaler.offset[m]) / new.scaler.scale[m]))
    _, probabilities = old.classify(x, choose(old, ("rgb", "depth")))
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", ["ss_hmvae_kl", "ss_hmvae"])
def test_a_frames_prediction_does_not_depend_on_the_others(project, networks, name):
    """Monte-Carlo draws and iterative sampling's chain: a frame alone, beside others, in
    another order or another batch size gets the same probabilities. Alone, up to rounding
    (a product of one row may take another kernel than one of six, and the hidden layers run
    in bf16 autocast: up to 9e-6 relative measured); the draws' own effect was 2e-3 (0.938
    alone, 0.936 beside another frame), 200 times the bound. In another order, bit for bit
    where the CPU's matrix kernels treat every row alike (AMX); an AVX2 CPU's fp32 kernels
    round a row by its place in the block (1.3e-7 relative measured, one float32 step), so
    the order is held to 1e-6, 2,000 times below the draws' effect."""
    classifier = _predictor(project, networks, name).classifier
    assert classifier.cfg.prediction == "monte_carlo" and classifier.cfg.predict_samples > 1
    data = read_features(project / "data/features/trial-1.h5")
    for evaluation in classifier.evaluations():
        x = {m: data.features[m][data.is_test][:6] for m in evaluation.inputs}
        _, together = classifier.classify(x, evaluation)
        _, backwards = classifier.classify({m: v[::-1] for m, v in x.items()}, evaluation)
        np.testing.assert_allclose(backwards[::-1], together, rtol=1e-6, atol=0,
                                   err_msg=str(evaluation))
        for i in (0, 5):
            _, alone = classifier.classify({m: v[i:i + 1] for m, v in x.items()}, evaluation)
            np.testing.assert_allclose(alone[0], together[i], rtol=1e-5, atol=0,
                                       err_msg=str(evaluation))


def test_frames_in_any_batch_size_get_the_same_prediction(project, networks):
    """Through VGG16 and iterative sampling, in batches of 1 and (reversed) of 3: the same
    categories, probabilities equal up to float32 rounding carried through the chain (3e-6
    measured on one thread, 3.3e-5 on two, whose kernels block a batch otherwise; the
    draws' own effect is about 2e-3, 20 times the bound)."""
    folder, _ = _test_frames(project)
    predictor = _predictor(project, networks, "ss_hmvae")
    frames, _ = collect(folder, None)
    evaluation = choose(predictor.classifier, ("rgb",))
    assert evaluation.method == "iterative"
    one = predict_frames(predictor, frames[:5], evaluation, batch_size=1)[0]
    many = predict_frames(predictor, frames[:5][::-1], evaluation, batch_size=3)[0]
    assert [[c for c, _ in p.top] for p in one] == [[c for c, _ in p.top] for p in many[::-1]]
    np.testing.assert_allclose([[q for _, q in p.top] for p in one],
                               [[q for _, q in p.top] for p in many[::-1]], rtol=0, atol=1e-4)


def test_missing_or_other_vgg16_checkpoint_is_a_clear_error(project, tmp_path, real_frames):
    model = project / "models/vae/mlp/trial-1"
    rgb = _real_pairs(real_frames) / "apple_1_1_1_crop.png"
    with pytest.raises(UserError, match=f"{tmp_path / 'trial-1-rgb' / 'model.pt'}: "
                                        "checkpoint not found"):
        run(model, rgb=rgb, vgg16_dir=tmp_path)

    def other_hash(state):
        state["provenance"]["attrs"]["checkpoint_sha256_rgb"] = "0" * 64

    copied = _copy_model(project, tmp_path, other_hash)
    with pytest.raises(UserError, match=r"trial-1-rgb/model.pt: sha256 .* is not that of the "
                                        "checkpoint the model's features were extracted with"):
        run(copied, rgb=rgb, vgg16_dir=project / "models/vgg16")
