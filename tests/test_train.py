"""Training and evaluation from a features file: contract, reproducibility, resume, errors."""

import json

import h5py
import numpy as np
import pytest
import torch

from pipeline.__main__ import main as cli
from pipeline.config import TrainConfig
from pipeline.engine import Checkpoint, NonFiniteLossError, adam
from pipeline.store import read_features, write_features
from pipeline.vae import MODELS, build_model
from pipeline.vae.data import prepare
from pipeline.vae.experiment import train_and_evaluate
from pipeline.vae.training import epoch_batches, fit
from tests.digits import digits_views

TINY = ["train.epochs=2", "train.hidden=16", "train.a_dim=4", "train.z_dim=4",
        "train.iterative_steps=3", "train.batch_size=64"]


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("features") / "digits.h5"
    write_features(path, digits_views(seed=0))
    return path


def tiny_config(**changes) -> TrainConfig:
    base = dict(epochs=2, hidden=16, a_dim=4, z_dim=4, iterative_steps=3, batch_size=64)
    return TrainConfig(**(base | changes))


@pytest.mark.parametrize("name", list(MODELS))
def test_cli_writes_metrics_for_every_input_mode(name, digits_file, tmp_path):
    out = tmp_path / name
    sets = [arg for s in TINY for arg in ("--set", s)]
    code = cli(["train", "--features", str(digits_file), "--model", name, "--out", str(out),
                "--no-progress", *sets])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == name
    expected = {"left", "right"} | ({"left+right"} if name not in ("m2", "sdgm") else set())
    assert set(metrics["accuracy"]) == expected
    assert all(0.0 <= v <= 1.0 for v in metrics["accuracy"].values())
    if name == "ss_hmvae":
        assert set(metrics["accuracy_iterative"]) == {"left", "right", "left+right"}
    if name == "ss_hmvae_kl":
        assert set(metrics["accuracy_by_method"]) == {"joint", "unimodal", "zero_fill"}
    assert (out / "config.json").is_file()
    # a completed run keeps no resume state (the train stage does not cache it)
    assert not (out / "checkpoint.pt").exists() and not (out / "code.sha256").exists()
    assert (out / "dvclive" / "metrics.json").is_file()


def test_fixed_seed_gives_identical_metrics(digits_file, tmp_path):
    runs = [train_and_evaluate(digits_file, "ss_hmvae", tiny_config(), tmp_path / f"run{i}",
                               progress=False, live=False) for i in range(2)]
    assert runs[0]["accuracy_by_method"] == runs[1]["accuracy_by_method"]
    assert runs[0]["final_loss"] == runs[1]["final_loss"]


def test_resume_after_kill_equals_uninterrupted(digits_file, tmp_path):
    data = prepare(read_features(digits_file), "gaussian", torch.device("cpu"))
    cfg = tiny_config(epochs=3, lr=1e-3, batch_size=128, labeled_batch_size=32, seed=1)

    def model():
        torch.manual_seed(0)
        return build_model("ss_hmvae_kl", data.dims, 10, tiny_config())

    whole = model()
    fit(whole, data, cfg, checkpoint=Checkpoint(tmp_path / "a.pt", {}), progress=False)

    class Killed(Exception):
        pass

    evaluated = []

    def killed_in_second_epoch():  # after epoch 1's checkpoint, before epoch 2's
        evaluated.append(1)
        if len(evaluated) == 2:
            raise Killed
        return {}

    killed = model()
    with pytest.raises(Killed):
        fit(killed, data, cfg, checkpoint=Checkpoint(tmp_path / "b.pt", {}),
            curves=tmp_path / "live", evaluate=killed_in_second_epoch, progress=False)
    assert torch.load(tmp_path / "b.pt", weights_only=True)["epoch"] == 1
    resumed = model()  # a fresh process: new weights, restored from the checkpoint
    history = fit(resumed, data, cfg, checkpoint=Checkpoint(tmp_path / "b.pt", {}),
                  progress=False)
    assert len(history) == 3
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_learning_curves_leave_training_unchanged(digits_file, tmp_path):
    """The per-epoch evaluation draws none of the training's random numbers."""
    data = prepare(read_features(digits_file), "gaussian", torch.device("cpu"))
    cfg = tiny_config(lr=1e-3, seed=1)
    losses = []
    for curves in (None, tmp_path / "live"):
        torch.manual_seed(0)
        model = build_model("ss_hmvae", data.dims, 10, cfg)

        def draws() -> dict[str, float]:
            return {"noise": float(torch.randn(()))}  # the global generator, as a bug would

        losses.append(fit(model, data, cfg, curves=curves, evaluate=draws, progress=False))
    assert losses[0] == losses[1]
    assert (tmp_path / "live" / "metrics.json").is_file()


def test_checkpoints_cost_at_most_their_share_of_training_time(tmp_path, monkeypatch):
    """A save is due after `every` epochs only once 20 times its cost has passed in training."""
    clock = [0.0]
    monkeypatch.setattr("pipeline.engine.time.perf_counter", lambda: clock[0])
    monkeypatch.setattr("pipeline.engine.torch_save",
                        lambda state, path: clock.__setitem__(0, clock[0] + 2.0))
    checkpoint = Checkpoint(tmp_path / "c.pt", {})
    assert checkpoint.due(1, 10)  # the first save: nothing measured yet
    checkpoint.save(1, {})  # takes 2 s
    clock[0] += 30.0  # an epoch of 30 s: 2 s is more than 5 % of it
    assert not checkpoint.due(2, 10)
    clock[0] += 10.0  # 40 s of training since: 2 s is 5 %
    assert checkpoint.due(3, 10)
    assert not checkpoint.due(10, 10)  # never after the last epoch


def test_a_cpu_run_of_hours_says_so_after_its_first_epoch(tmp_path, monkeypatch, caplog):
    """One warning with the estimate, after the first epoch, only when the rest takes hours."""
    from torch import nn

    from pipeline import engine

    clock = [0.0]
    monkeypatch.setattr("pipeline.engine.time.perf_counter", lambda: clock[0])
    model = nn.Linear(2, 1)
    optimizer = torch.optim.Adam(model.parameters())

    def epoch_of(seconds: float):
        def run_epoch(epoch: int) -> dict[str, float]:
            clock[0] += seconds
            return {"loss": 1.0}
        return run_epoch

    caplog.set_level("WARNING")
    engine.train(model, optimizer, epoch_of(10.0), epochs=200, desc="train m2", progress=False)
    assert caplog.text == ""  # 199 x 10 s: 33 minutes
    engine.train(model, optimizer, epoch_of(60.0), epochs=200, desc="train m2", progress=False)
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["train m2 on the CPU: about 3.3 h for the 199 epochs left (60 s for "
                        "the first); a GPU is advised (docs/scale.md)"]


def test_checkpoint_of_other_parameters_is_not_resumed(digits_file, tmp_path):
    out = tmp_path / "run"
    first = train_and_evaluate(digits_file, "mlp", tiny_config(), out, progress=False, live=False)
    second = train_and_evaluate(digits_file, "mlp", tiny_config(lr=1e-3), out, progress=False,
                                live=False)
    assert second["epochs"] == 2 and second["final_loss"] != first["final_loss"]


def test_epochs_visit_every_unlabelled_example_once():
    cfg = tiny_config(batch_size=4, labeled_batch_size=3)
    pairs = list(epoch_batches(np.random.default_rng(0), 9, 5, cfg))
    unlabelled = np.concatenate([u for _, u in pairs])
    assert sorted(unlabelled) == list(range(9))
    assert [len(u) for _, u in pairs] == [4, 5]  # a lone last example is folded back in
    assert all(len(lab) == 3 for lab, _ in pairs)


def test_non_finite_loss_is_a_clear_error(digits_file, monkeypatch):
    data = prepare(read_features(digits_file), "gaussian", torch.device("cpu"))
    model = build_model("mlp", data.dims, 10, tiny_config())
    original = model.loss

    def poisoned(labelled, unlabelled):
        loss, terms = original(labelled, unlabelled)
        return loss * float("nan"), terms

    monkeypatch.setattr(model, "loss", poisoned)
    cfg = tiny_config(epochs=1, lr=1e-3, batch_size=128, labeled_batch_size=32)
    with pytest.raises(NonFiniteLossError, match="non-finite in epoch 1"):
        fit(model, data, cfg, progress=False)


def broken(path, digits_file, action):
    path.write_bytes(digits_file.read_bytes())
    with h5py.File(path, "a") as f:
        action(f)
    return path


@pytest.mark.parametrize(("action", "model", "message"), [
    (lambda f: f.attrs.__setitem__("schema", "ssmvae-images/1"), "m2",
     "expected schema 'ssmvae-features/1'"),
    (lambda f: f["features/left"].__setitem__((0, 0), np.nan), "m2", "NaN or inf"),
    (lambda f: f["is_labeled"].__setitem__(slice(None), False), "ss_hmvae",
     "no labelled training example"),
    (lambda f: (f.__delitem__("features/right"), f.attrs.__setitem__("modalities", ["left"])),
     "ss_hmvae_kl", "needs two modalities"),
    (lambda f: f.__delitem__("features/right"), "m2", "missing dataset 'features/right'"),
])
def test_bad_features_fail_before_anything_is_written(tmp_path, digits_file, capsys, action,
                                                      model, message):
    path = broken(tmp_path / "bad.h5", digits_file, action)
    out = tmp_path / "out"
    code = cli(["train", "--features", str(path), "--model", model, "--out", str(out),
                "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err
    assert not out.exists()


def test_unknown_model_and_parameter(tmp_path, digits_file, capsys):
    out = tmp_path / "out"
    assert cli(["train", "--features", str(digits_file), "--model", "m3", "--out", str(out)]) == 2
    assert "unknown model 'm3'" in capsys.readouterr().err
    assert cli(["train", "--features", str(digits_file), "--model", "m2", "--out", str(out),
                "--set", "train.alpha=-1"]) == 2
    assert "train.alpha: expected a number >= 0" in capsys.readouterr().err
    assert not out.exists()


def test_a_failing_compiler_falls_back_to_eager_with_a_message(digits_file, monkeypatch,
                                                               capsys):
    class CompilerFailed(torch._dynamo.exc.TorchDynamoException):
        pass

    def broken_compile(module):
        def forward(*args):
            raise CompilerFailed("no C++ compiler")
        return forward

    monkeypatch.setattr(torch, "compile", broken_compile)
    data = prepare(read_features(digits_file), "gaussian", torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model("ss_mvae", data.dims, 10, tiny_config())
    cfg = tiny_config(epochs=1, lr=1e-3, batch_size=128, labeled_batch_size=32, seed=1,
                      compile="always")
    history = fit(model, data, cfg, progress=False)
    assert np.isfinite(history[0]["loss"])
    assert "torch.compile failed (CompilerFailed: no C++ compiler)" in capsys.readouterr().out


@pytest.mark.slow
def test_compiled_loss_trains_like_the_eager_one(digits_file):
    """train.compile's path (the default on CUDA) through torch.compile on the CPU: it runs,
    and lands where eager training does (its own random numbers: not bit for bit)."""
    data = prepare(read_features(digits_file), "gaussian", torch.device("cpu"))
    losses = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = build_model("ss_mvae", data.dims, 10, tiny_config())
        cfg = tiny_config(lr=1e-3, batch_size=128, labeled_batch_size=32, seed=1,
                          compile="always" if compiled else "never")
        losses[compiled] = fit(model, data, cfg, progress=False)[-1]["loss"]
    assert losses[True] == pytest.approx(losses[False], rel=0.05)


def test_the_fused_adam_of_every_trainer_is_adam_to_rounding():
    """`engine.adam` is torch's fused kernel on the CPU too (7x faster there at the paper's
    sizes): after 20 steps on the same gradients its weights are those of torch's default
    Adam up to float32 rounding, far below one step's change."""
    torch.manual_seed(0)
    fused, plain = torch.nn.Linear(64, 32), torch.nn.Linear(64, 32)
    plain.load_state_dict(fused.state_dict())
    start = fused.weight.detach().clone()
    optimizers = adam(fused, 1e-3), torch.optim.Adam(plain.parameters(), lr=1e-3)
    assert optimizers[0].defaults["fused"]
    for step in range(20):
        g = torch.Generator().manual_seed(step)
        for a, b in zip(fused.parameters(), plain.parameters(), strict=True):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        for optimizer in optimizers:
            optimizer.step()
    moved = (fused.weight - start).abs().max().item()
    assert moved > 1e-2  # 20 steps of lr 1e-3
    torch.testing.assert_close(fused.weight, plain.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(fused.bias, plain.bias, rtol=0, atol=1e-6)
