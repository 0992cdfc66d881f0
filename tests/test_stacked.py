"""Stacked training (pipeline/vae/stacked.py) against runs trained apart with `fit`.

The claim is equality in distribution: the runs draw independent noise, so no stacked run
can reproduce a separate run's samples. The tests therefore take the noise out where they
compare trajectories (dropout 0, y enumerated, and `Normal.rsample` returning the mean),
and check the noise itself separately (independent per run, distributed as alone).

Why Adam's eps is raised in the trajectory comparison: a Linear bias in front of
BatchNorm has a gradient that is exactly 0 in exact arithmetic, so in float32 it is
rounding noise, which Adam divides by its own square root: that bias then moves by about
+-lr per step in a direction set by rounding alone, in a separate run as in a stacked one
(batched matmuls round differently). With eps = 1 such noise moves nothing and the
comparison is tight; `test_stacked_adam_equals_torch_adam` checks the default eps exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from pipeline.__main__ import main as cli
from pipeline.config import TrainConfig
from pipeline.store import write_features
from pipeline.vae import build_model, stacked
from pipeline.vae.data import TrialData, prepare
from pipeline.vae.experiment import train_and_evaluate
from pipeline.vae.objective import Batch
from pipeline.vae.stacked import StackedRuns, _StackedAdam, fit_stacked
from pipeline.vae.training import FitSettings, NonFiniteLossError, fit
from tests.digits import digits_views

CPU = torch.device("cpu")
TINY = ["train.epochs=2", "train.hidden=16", "train.a_dim=4", "train.z_dim=4",
        "train.iterative_steps=3", "train.batch_size=64", "train.labeled_batch_size=16"]


def tiny_config(**changes) -> TrainConfig:
    base = dict(epochs=2, hidden=16, a_dim=4, z_dim=4, iterative_steps=3, batch_size=64,
                labeled_batch_size=16)
    return TrainConfig(**(base | changes))


@pytest.fixture(scope="module")
def trials() -> list[TrialData]:
    """Two trials with other rows in each set, and other counts: 62 labelled and 1196
    unlabelled rows (19 steps of 64, the last of 44) against 60 and 1108 (18 steps, the
    last of 20), so the runs take ragged and lone steps at the end of every epoch."""
    datas = [prepare(digits_views(seed=0), "gaussian", CPU),
             prepare(digits_views(seed=1, test_fraction=0.35), "gaussian", CPU)]
    assert [(len(d.labelled), len(d.unlabelled)) for d in datas] == [(62, 1196), (60, 1108)]
    return datas


@pytest.fixture
def no_noise(monkeypatch):
    """Reparameterised Gaussian samples at their mean, and Adam with eps = 1 (see above)."""
    monkeypatch.setattr(Normal, "rsample", lambda self, sample_shape=():
                        self.loc.expand(self._extended_shape(sample_shape)))
    monkeypatch.setattr(torch.optim, "Adam", functools.partial(torch.optim.Adam, eps=1.0))
    monkeypatch.setattr(stacked, "EPS", 1.0)


def settings_of(cfg: TrainConfig) -> FitSettings:
    # lr 1e-3 rather than 1e-4: the runs move further, so a difference shows more.
    return FitSettings(epochs=cfg.epochs, lr=cfg.lr * 10, batch_size=cfg.batch_size,
                       labeled_batch_size=cfg.labeled_batch_size, seed=cfg.seed,
                       grad_clip=cfg.grad_clip, precision=cfg.precision)


def built(name: str, data: TrialData, cfg: TrainConfig) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)
    return build_model(name, data.dims, len(data.categories), cfg)


@pytest.mark.parametrize(("name", "changes"), [
    ("ss_hmvae_kl", {}),
    ("ss_hmvae_kl", {"labeled_batch_size": 128, "grad_clip": 1.0}),  # 62 vs 60: never grouped
    ("m2", {}),
    ("mlp", {}),
])
def test_stacked_equals_separate_fit(no_noise, trials, name, changes):
    cfg = tiny_config(dropout=0.0, unlabeled_y="enumerate", **changes)
    settings = settings_of(cfg)
    apart = [built(name, d, cfg) for d in trials]
    histories = [fit(m, d, settings, progress=False) for m, d in zip(apart, trials, strict=True)]
    together = [built(name, d, cfg) for d in trials]
    stacked_histories = fit_stacked(together, trials, settings, progress=False)
    for run, (a, b) in enumerate(zip(apart, together, strict=True)):
        for (key, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5, msg=f"run {run}: {key}")
        for epoch, (h, s) in enumerate(zip(histories[run], stacked_histories[run],
                                           strict=True)):
            assert h.keys() == s.keys()
            for term in h:
                assert s[term] == pytest.approx(h[term], rel=1e-5, abs=1e-5), (run, epoch, term)


def test_stacked_adam_equals_torch_adam():
    """Default hyper-parameters; runs that skip steps keep their moments and step counts."""
    g = torch.Generator().manual_seed(0)
    start = {"w": torch.randn(3, 4, 5, generator=g), "b": torch.randn(3, 5, generator=g)}
    params = {k: v.clone() for k, v in start.items()}
    adam = _StackedAdam(params, lr=1e-2)
    alone = [{k: v[r].clone().requires_grad_() for k, v in start.items()} for r in range(3)]
    torch_adams = [torch.optim.Adam(list(p.values()), lr=1e-2) for p in alone]
    schedule = [[0, 1, 2], [0, 2], [1], [0, 1, 2], [2], [0, 1]]
    for runs in schedule:
        grads = {k: torch.randn(len(runs), *v.shape[1:], generator=g) * 1e-3
                 for k, v in start.items()}
        adam.step(runs, grads)
        for i, r in enumerate(runs):
            for k, p in alone[r].items():
                p.grad = grads[k][i].clone()
            torch_adams[r].step()
    for r in range(3):
        for k, p in alone[r].items():
            torch.testing.assert_close(params[k][r], p.detach(), rtol=1e-6, atol=1e-7)


def test_each_run_gets_gradients_from_its_own_data_only(trials):
    cfg = tiny_config()  # Gumbel-softmax, dropout 0.5: the same seed gives the same draws
    rows = np.arange(32)

    def gradients(shift: float) -> dict[str, torch.Tensor]:
        stack = StackedRuns([built("ss_hmvae_kl", d, cfg) for d in trials])
        labelled = stacked._gather([d.labelled for d in trials], [rows[:8], rows[:8]], CPU)
        unlabelled = stacked._gather([d.unlabelled for d in trials], [rows, rows], CPU)
        unlabelled.x["left"][1] += shift  # run 1's data only
        torch.manual_seed(0)
        params = stack.rows([0, 1])
        loss, _ = stack.losses([0, 1], params, labelled, unlabelled)
        names = list(params)
        grads = torch.autograd.grad(loss.sum(), [params[k] for k in names])
        return dict(zip(names, grads, strict=True))

    base, moved = gradients(0.0), gradients(1.0)
    changed_1 = 0
    for k in base:
        torch.testing.assert_close(moved[k][0], base[k][0], rtol=0, atol=0, msg=k)
        changed_1 += not torch.equal(moved[k][1], base[k][1])
    assert changed_1 > len(base) // 2


def test_noise_is_independent_per_run_and_distributed_as_alone(trials):
    """K copies of one model on one batch: stacked losses against K losses computed apart."""
    cfg = tiny_config()  # every noise source on: rsample, Gumbel-softmax, dropout 0.5
    k, data = 48, trials[0]
    model = built("ss_hmvae_kl", data, cfg)
    labelled = Batch({m: t[:16] for m, t in data.labelled.x.items()}, data.labelled.y[:16])
    unlabelled = Batch({m: t[:64] for m, t in data.unlabelled.x.items()})
    torch.manual_seed(1)
    apart = torch.stack([model.loss(labelled, unlabelled)[0].detach() for _ in range(k)])
    stack = StackedRuns([built("ss_hmvae_kl", data, cfg) for _ in range(k)])

    def repeat(batch: Batch) -> Batch:
        y = None if batch.y is None else batch.y.expand(k, -1)
        return Batch({m: t.expand(k, -1, -1) for m, t in batch.x.items()}, y)

    torch.manual_seed(1)
    runs = list(range(k))
    together = stack.losses(runs, stack.rows(runs), repeat(labelled),
                            repeat(unlabelled))[0].detach()
    assert len(set(together.tolist())) == k  # every run drew its own noise
    stderr = float(torch.sqrt(apart.var() / k + together.var() / k))
    assert abs(float(apart.mean() - together.mean())) < 4 * stderr
    assert 0.5 < float(together.std() / apart.std()) < 2.0


@pytest.mark.parametrize("name", ["mlp", "ss_mvae"])  # a NaN loss; a NaN distribution
def test_non_finite_loss_names_the_run(trials, name):
    cfg = tiny_config(epochs=1)
    bad = Batch({m: t.clone() for m, t in trials[1].labelled.x.items()}, trials[1].labelled.y)
    bad.x["left"][:] = float("inf")
    datas = [trials[0], dataclasses.replace(trials[1], labelled=bad)]
    models = [built(name, d, cfg) for d in datas]
    with pytest.raises(NonFiniteLossError, match=r"^second: .* non-finite in epoch 1"):
        fit_stacked(models, datas, settings_of(cfg), progress=False, names=["first", "second"])


def test_bf16_autocast_runs(trials):
    cfg = tiny_config(epochs=1, precision="bf16")
    models = [built("ss_hmvae_kl", d, cfg) for d in trials]
    histories = fit_stacked(models, trials, settings_of(cfg), progress=False)
    assert all(np.isfinite(h[0]["loss"]) for h in histories)


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("features")
    paths = [folder / "trial-1.h5", folder / "trial-2.h5"]
    write_features(paths[0], digits_views(seed=0))
    write_features(paths[1], digits_views(seed=1, test_fraction=0.35))
    return paths


def test_cli_with_two_features_files_writes_each_run_as_alone(digits_files, tmp_path):
    sets = [arg for s in TINY for arg in ("--set", s)]
    outs = [tmp_path / "a", tmp_path / "b"]
    code = cli(["train", "--features", *map(str, digits_files), "--model", "ss_hmvae",
                "--out", *map(str, outs), "--no-progress", *sets])
    assert code == 0
    alone = tmp_path / "alone"
    assert cli(["train", "--features", str(digits_files[0]), "--model", "ss_hmvae", "--out",
                str(alone), "--no-progress", *sets]) == 0
    single = json.loads((alone / "metrics.json").read_text())
    for out, features in zip(outs, digits_files, strict=True):
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics.keys() == single.keys() | {"stacked"}
        assert metrics["stacked"] == 2 and metrics["features"] == str(features)
        assert metrics["accuracy"].keys() == single["accuracy"].keys()
        assert metrics["accuracy_by_method"].keys() == single["accuracy_by_method"].keys()
        assert (out / "config.json").read_text() == (alone / "config.json").read_text()
        assert (out / "dvclive" / "metrics.json").is_file()
    assert json.loads((outs[1] / "metrics.json").read_text())["n_unlabelled"] == 1108
    # The checkpoint is fit's: a single run on the same inputs finds the training finished.
    resumed = train_and_evaluate(digits_files[0], "ss_hmvae", _config(TINY), outs[0],
                                 progress=False, live=False)
    first = json.loads((outs[0] / "metrics.json").read_text())
    assert resumed["final_loss"] == first["final_loss"]
    assert resumed["accuracy_by_method"] == first["accuracy_by_method"]


def _config(sets: list[str]) -> TrainConfig:
    values = {key.removeprefix("train."): value for key, value in (s.split("=") for s in sets)}
    return TrainConfig(**{k: int(v) for k, v in values.items()})


def test_mismatched_features_and_out_counts_are_a_clear_error(digits_files, tmp_path, capsys):
    outs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    code = cli(["train", "--features", *map(str, digits_files), "--model", "mlp",
                "--out", *map(str, outs), "--no-progress"])
    assert code == 2
    assert "got 2 features file(s) and 3 output folder(s)" in capsys.readouterr().err
    assert not any(out.exists() for out in outs)


def test_files_of_other_shapes_fail_before_anything_is_written(digits_files, tmp_path, capsys):
    narrow = digits_views(seed=2)
    narrow = dataclasses.replace(narrow, features={m: x[:, :16] if m == "left" else x
                                                   for m, x in narrow.features.items()})
    other = tmp_path / "narrow.h5"
    write_features(other, narrow)
    outs = [tmp_path / "a", tmp_path / "b"]
    code = cli(["train", "--features", str(digits_files[0]), str(other), "--model", "mlp",
                "--out", *map(str, outs), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(other) in err and "one model shape" in err
    assert not any(out.exists() for out in outs)
