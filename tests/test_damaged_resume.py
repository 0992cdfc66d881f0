"""A damaged resume file (truncated, empty, random bytes) is deleted with a one-line message,
and the stage starts afresh: train's `checkpoint.pt`, VGG16's `state.pt` (both the engine's)."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.__main__ import main as cli
from pipeline.features import finetune as ft
from pipeline.features import vgg
from tests.test_features_pipeline import CONFIG, data, outside_any_repo  # noqa: F401
from tests.test_train import TINY, digits_file  # noqa: F401
from tests.tiny_vgg_stage import tiny_vgg16

ROOT = Path(__file__).resolve().parents[1]

DAMAGES = {
    "truncated": lambda good: good[:len(good) // 2],
    "empty": lambda good: b"",
    "random bytes": lambda good: np.random.default_rng(0).bytes(4096),
}


class Killed(Exception):
    pass


def _train(features, out, *extra):
    sets = [arg for s in [*TINY, *extra] for arg in ("--set", s)]
    return cli(["train", "--params", str(ROOT / "params.yaml"), "--features", str(features),
                "--model", "ss_mvae", "--out", str(out),
                "--no-progress", *sets])


@pytest.fixture(scope="module")
def train_runs(digits_file, tmp_path_factory):  # noqa: F811
    """An uninterrupted run's metrics, and a real checkpoint.pt of a killed run."""
    root = tmp_path_factory.mktemp("train")
    assert _train(digits_file, root / "whole") == 0
    killed = root / "killed"
    with pytest.MonkeyPatch.context() as mp:  # killed in epoch 2, after epoch 1's checkpoint
        mp.setattr("pipeline.vae.experiment._curve_accuracy", _kill_in_second_epoch())
        with pytest.raises(Killed):
            _train(digits_file, killed)
    return json.loads((root / "whole" / "metrics.json").read_text()), \
        (killed / "checkpoint.pt").read_bytes()


def _kill_in_second_epoch():
    calls = []

    def curve(*args):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return {}

    return curve


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_train_checkpoint_is_deleted_and_the_stage_starts_afresh(
        digits_file, train_runs, tmp_path, caplog, capsys, damage):  # noqa: F811
    whole, good = train_runs
    assert torch.load(_write(tmp_path / "good.pt", good), weights_only=True)["epoch"] == 1
    out = tmp_path / "run"
    _write(out / "checkpoint.pt", DAMAGES[damage](good))
    caplog.set_level("WARNING")
    assert _train(digits_file, out) == 0
    lines = [r.getMessage() for r in caplog.records if "checkpoint.pt" in r.getMessage()]
    assert len(lines) == 1 and "unreadable (" in lines[0]
    assert "deleting it and starting afresh" in lines[0] and "\n" not in lines[0]
    assert "Traceback" not in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final_loss"] == whole["final_loss"]  # afresh: the uninterrupted result
    assert metrics["accuracy_by_method"] == whole["accuracy_by_method"]
    assert not (out / "checkpoint.pt").exists()


@pytest.fixture(scope="module")
def finetune_runs(data, tmp_path_factory):  # noqa: F811
    """A tiny VGG's uninterrupted fine-tuning, and a real state.pt of a killed one."""
    root = tmp_path_factory.mktemp("finetune")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vgg, "vgg16", tiny_vgg16)
        whole = ft.finetune(**_finetune_args(data, root / "whole"))
        real = ft._train_epoch

        def killed_in_second_epoch(*args, epoch, **kwargs):
            if epoch == 1:
                raise Killed
            return real(*args, epoch=epoch, **kwargs)

        mp.setattr(ft, "_train_epoch", killed_in_second_epoch)
        with pytest.raises(Killed):
            ft.finetune(**_finetune_args(data, root / "killed"))
    return whole, (root / "whole" / "model.pt").read_bytes(), \
        (root / "killed" / "state.pt").read_bytes()


def _finetune_args(data, out):  # noqa: F811
    return {"images": data["images"], "splits": data["splits"], "trial": 1, "modality": "rgb",
            "out": out, "config": replace(CONFIG, checkpoint_every=1),
            "cache_dir": out / "cache"}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_finetune_state_is_deleted_and_the_stage_starts_afresh(
        data, finetune_runs, tmp_path, caplog, monkeypatch, damage):  # noqa: F811
    whole, model, good = finetune_runs
    monkeypatch.setattr(vgg, "vgg16", tiny_vgg16)
    out = tmp_path / "run"
    _write(out / "state.pt", DAMAGES[damage](good))
    caplog.set_level("WARNING")
    assert ft.finetune(**_finetune_args(data, out)) == whole
    lines = [r.getMessage() for r in caplog.records if "state.pt" in r.getMessage()]
    assert len(lines) == 1 and "unreadable (" in lines[0]
    assert "deleting it and starting afresh" in lines[0] and "\n" not in lines[0]
    assert (out / "model.pt").read_bytes() == model and not (out / "state.pt").exists()


def _write(path, content: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path
