"""Data-parallel training: two gloo processes on the CPU against one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline import distributed
from pipeline.distributed import ShardedRandomness, World
from pipeline.store import write_features
from tests.ddp_fit import two_views

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_shards_are_equal_contiguous_and_drop_the_remainder():
    batch = np.arange(11)
    shards = [distributed.shard(batch, World(rank=r, size=2)) for r in range(2)]
    assert [s.tolist() for s in shards] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert distributed.shard(batch, World()) is batch


@pytest.mark.parametrize("rank", [0, 1])
def test_sharded_draws_are_the_rows_one_process_would_draw(rank):
    torch.manual_seed(0)
    whole_normal = torch.empty(6, 3).normal_()
    whole_rand = torch.rand(6, 4)
    x = torch.ones(6, 5)
    whole_dropout = nn.functional.dropout(x, 0.5)
    torch.manual_seed(0)
    with ShardedRandomness(World(rank=rank, size=2)):
        normal = torch.empty(3, 3).normal_()
        rand = torch.rand((3, 4))
        dropout = nn.Dropout(0.5)(x[:3])
        with pytest.raises(NotImplementedError, match="randn"):
            torch.randn(3, 2)
    rows = slice(3 * rank, 3 * rank + 3)
    assert torch.equal(normal, whole_normal[rows])
    assert torch.equal(rand, whole_rand[rows])
    assert torch.equal(dropout, whole_dropout[rows])


def test_global_batchnorm_keeps_the_optimizers_parameters_and_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    params = list(model.parameters())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    distributed.global_batchnorm(model)
    assert type(model[1]) is distributed.GlobalBatchNorm1d
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    x = torch.randn(8, 3)  # without a process group it is plain BatchNorm1d
    assert torch.equal(model(x), nn.functional.batch_norm(
        model[0](x), None, None, model[1].weight, model[1].bias, training=True))


def test_relaunch_only_when_asked_and_not_under_torchrun(monkeypatch):
    assert distributed.relaunch(1, "train", []) is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.relaunch(2, "train", []) is None


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    """tests/ddp_fit.py in one process and in two (torchrun, gloo)."""
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    subprocess.run([sys.executable, ROOT / "tests" / "ddp_fit.py", one], env=env(), check=True)
    subprocess.run([*TORCHRUN, ROOT / "tests" / "ddp_fit.py", two], env=env(), check=True,
                   capture_output=True)
    load = lambda folder, rank: torch.load(folder / f"rank-{rank}.pt")  # noqa: E731
    return load(one, 0), load(two, 0), load(two, 1)


def test_both_processes_end_with_identical_parameters(fits):
    _, rank0, rank1 = fits
    assert rank0["world"] == rank1["world"] == 2
    assert rank0["state"].keys() == rank1["state"].keys()
    for name, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][name]), name
    assert rank0["accuracy"] == rank1["accuracy"]


def test_two_processes_train_as_one_does(fits):
    one, two, _ = fits
    for epoch_one, epoch_two in zip(one["history"], two["history"], strict=True):
        assert epoch_one == pytest.approx(epoch_two, rel=1e-6)
    # A Linear layer followed by BatchNorm has a bias whose gradient is exactly zero in
    # exact arithmetic; in floating point it is rounding noise that Adam scales to a step of
    # +-lr, whose sign depends on the order of additions (as with another thread count in
    # one process). Those biases random-walk differently; the running means (which include
    # them) follow. Every other parameter must agree.
    pre_bn_bias = {name for name in one["state"] if name.endswith(".0.bias")}
    for name, value in one["state"].items():
        if name in pre_bn_bias or "running_" in name or "num_batches" in name:
            continue
        torch.testing.assert_close(two["state"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    for method, accuracies in one["accuracy"].items():
        for key, accuracy in accuracies.items():  # at most 2 of 300 test examples apart
            assert abs(two["accuracy"][method][key] - accuracy) <= 2 / 300 + 1e-9, (method, key)


def test_launch_processes_runs_the_train_stage_under_torchrun(tmp_path):
    features = tmp_path / "views.h5"
    write_features(features, two_views())
    sets = ["train.epochs=1", "train.hidden=16", "train.a_dim=4", "train.z_dim=4",
            "train.batch_size=64", "train.labeled_batch_size=32", "train.precision=fp32"]
    args = [a for s in sets for a in ("--set", s)]
    outs = {}
    for processes in (1, 2):
        outs[processes] = tmp_path / f"p{processes}"
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "train", "--params", ROOT / "params.yaml",
             "--features", features, "--model", "ss_mvae", "--out", outs[processes],
             "--no-progress", *args, "--set", f"launch.processes={processes}"],
            env=env(), cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert "launching 2 processes" in done.stderr
    assert done.stdout.count("ss_mvae: accuracy") == 1  # the main process alone reports
    one, two = (json.loads((outs[p] / "metrics.json").read_text()) for p in (1, 2))
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-6)
    assert two["accuracy"].keys() == one["accuracy"].keys()


def test_several_features_files_for_one_vae_run_are_refused_before_any_launch(tmp_path,
                                                                             capsys):
    from pipeline.__main__ import main as cli

    features = [tmp_path / "a.h5", tmp_path / "b.h5"]
    with pytest.raises(SystemExit) as exit_:
        cli(["train", "--params", str(ROOT / "params.yaml"), "--features", *map(str, features),
             "--model", "m2", "--out", str(tmp_path / "a"), str(tmp_path / "b"),
             "--set", "launch.processes=2"])
    assert exit_.value.code == 2
    assert f"unrecognized arguments: {features[1]} {tmp_path / 'b'}" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
