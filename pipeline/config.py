"""Typed, validated parameters.

`params.yaml` holds the paper's configuration, one section per stage, plus a `profiles`
table: a profile lists only the keys it changes, nested like the sections
(`profiles.demo.train.epochs: 20`, which `dvc exp run -S` can address too). The effective
configuration is built in three layers, each validated the same way:

    paper values (the sections)  <-  profiles[profile]  <-  --set key=value

A section value that differs from the paper's (the dataclass default) where the active
profile sets the same key is refused, naming the profile's key: the profile would otherwise
discard it silently (`dvc exp run -S train.epochs=5` on the demo profile).

Every default is written once: a section's dataclass defaults are the paper profile's
values, and `params.yaml` repeats them key by key only so that DVC can track and `-S` can
set each one (tests/test_config.py fails when the two disagree or a key is missing). Every
allowed value is declared once, below; other modules import it.

Library code never reads `params.yaml`; stages call `load_config` and hand the relevant
section (a frozen dataclass) to the library.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.atomic import plain, write_json
from pipeline.errors import UserError

# Every allowed value, declared once: the sections' type hints use these, `load_config`
# checks a value against its hint, and other modules import the tuples (never a copy).
DEVICES = ("auto", "cpu", "cuda")  # or "cuda:N"
# autocast dtype; auto = bf16 where the device computes it natively (CUDA, a CPU with AMX or
# AVX512-BF16), fp32 elsewhere (pipeline/devices.py)
Precision = Literal["auto", "bf16", "fp32"]
Likelihood = Literal["gaussian", "gaussian_fixed", "bernoulli"]  # p(x|.) of the features
UnlabeledY = Literal["gumbel", "enumerate"]  # how eq. (4) handles y on unlabelled data
Fill = Literal["mean", "sample"]  # Appendix D: the missing modality from p(x|a)
Prediction = Literal["posterior_mean", "monte_carlo"]  # q(y|x) = E_q(a|x)[q(y|a)]
Compile = Literal["auto", "always", "never"]
Backend = Literal["auto", "nccl", "gloo"]
PRECISIONS = typing.get_args(Precision)
LIKELIHOODS = typing.get_args(Likelihood)
UNLABELED_Y = typing.get_args(UnlabeledY)
FILLS = typing.get_args(Fill)
PREDICTIONS = typing.get_args(Prediction)
# The models of Table 1 that `train` can run: the networks of pipeline/vae (their registry
# `pipeline.vae.MODELS` has exactly these keys) and the classical peers of
# pipeline/classical (`CLASSICAL`); tests/test_config.py checks both registries.
VAE_MODELS = ("m2", "sdgm", "ss_mvae", "ss_hmvae", "ss_hmvae_kl", "mlp")
CLASSICAL_MODELS = ("ct_svm", "cotraining", "label_spreading")


class ConfigError(UserError):
    """A parameter is unknown, of the wrong type or out of range; the message names it."""

    key = ""  # the dotted key, when a range check raised it


@dataclass(frozen=True)
class DownloadConfig:
    """Where the Washington RGB-D evaluation subset comes from.

    `source: synthetic` generates the bundled synthetic set in the same layout and archive
    format instead, so every later stage runs the same code on both.
    """

    source: Literal["washington", "synthetic"] = "washington"
    url: str = (
        "https://rgbd-dataset.cs.washington.edu/dataset/rgbd-dataset_eval/rgbd-dataset_eval.zip"
    )
    splits_url: str = (
        "https://rgbd-dataset.cs.washington.edu/dataset/rgbd-dataset_eval/testinstance_ids.txt"
    )
    size: int = 673_456_874  # bytes; 0 = unknown
    sha256: str = ""  # empty = not checked
    retries: int = 5
    timeout_s: float = 60.0
    synthetic_seed: int = 0
    synthetic_categories: int = 8  # the synthetic set's own category count
    synthetic_instances: int = 3  # per category
    synthetic_frames: int = 6  # per video (videos 1, 2, 4)
    backoff_s: float = 1.0  # wait before retry k is backoff_s * 2**k (k = 0, 1, ...)

    def check(self) -> None:
        _require(self.size >= 0, "download.size", self.size, "an integer >= 0 (0 = unknown)")
        _require(
            self.sha256 == "" or (len(self.sha256) == 64 and _is_hex(self.sha256)),
            "download.sha256", self.sha256, "empty or 64 hexadecimal digits",
        )
        _require(self.retries >= 0, "download.retries", self.retries, "an integer >= 0")
        _require(self.timeout_s > 0, "download.timeout_s", self.timeout_s, "a number > 0")
        _require(self.synthetic_categories >= 2, "download.synthetic_categories",
                 self.synthetic_categories, "an integer >= 2")
        _require(self.synthetic_instances >= 2, "download.synthetic_instances",
                 self.synthetic_instances, "an integer >= 2 (one is held out per trial)")
        _require(self.synthetic_frames >= 1, "download.synthetic_frames",
                 self.synthetic_frames, "an integer >= 1")
        _require(self.synthetic_categories <= 10, "download.synthetic_categories",
                 self.synthetic_categories, "at most 10 (the synthetic set defines 10)")
        _require(self.backoff_s >= 0, "download.backoff_s", self.backoff_s, "a number >= 0")


@dataclass(frozen=True)
class PreprocessConfig:
    size: int = 148  # Appendix A: the longer side is scaled to 148 px
    max_skip_fraction: float = 0.01  # fail if more frames than this are unreadable
    workers: int = 0  # 0 = one per core
    chunk: int = 256  # frames written per HDF5 append

    def check(self) -> None:
        _require(self.size >= 8, "preprocess.size", self.size, "an integer >= 8")
        _require(0 <= self.max_skip_fraction <= 1, "preprocess.max_skip_fraction",
                 self.max_skip_fraction, "a fraction in [0, 1]")
        _require(self.workers >= 0, "preprocess.workers", self.workers, "an integer >= 0")
        _require(self.chunk >= 1, "preprocess.chunk", self.chunk, "an integer >= 1")


@dataclass(frozen=True)
class SplitConfig:
    trials: tuple[int, ...] = tuple(range(1, 11))  # Lai et al.'s 10 trials
    labeled_fraction: float = 0.05  # Section 4: 5% of the training set is labelled
    seed: int = 0

    def check(self) -> None:
        _require(len(self.trials) > 0 and all(t >= 1 for t in self.trials), "split.trials",
                 list(self.trials), "a non-empty list of trial numbers >= 1")
        _require(len(set(self.trials)) == len(self.trials), "split.trials",
                 list(self.trials), "trial numbers without repeats")
        _require(0 < self.labeled_fraction < 1, "split.labeled_fraction",
                 self.labeled_fraction, "a fraction in (0, 1)")


@dataclass(frozen=True)
class FinetuneConfig:
    weights: str = "imagenet"  # "imagenet", "none" (random init) or a path to a state dict
    epochs: int = 200  # Appendix A
    lr: float = 1e-5  # Appendix A
    batch_size: int = 32
    image_size: int = 148
    augment: bool = False
    seed: int = 0
    device: str = "auto"
    # Where `weights: imagenet` comes from (torchvision's VGG16_Weights.IMAGENET1K_V1).
    weights_url: str = "https://download.pytorch.org/models/vgg16-397923af.pth"
    # sha256 of the ImageNet file (also checked for a local weights path): a hex prefix of
    # >= 8 digits, as torchvision checks the one in the file name, or all 64; "" = unchecked.
    weights_sha256: str = "397923af"
    checkpoint_every: int = 1  # epochs between resumable checkpoints (each ~1.6 GB)
    precision: Precision = "auto"  # autocast: auto = bf16 where native, else fp32

    def check(self) -> None:
        _require(self.weights != "", "finetune.weights", self.weights,
                 "'imagenet', 'none' or a path to a weights file")
        _require(self.weights_sha256 == "" or (8 <= len(self.weights_sha256) <= 64
                                               and _is_hex(self.weights_sha256)),
                 "finetune.weights_sha256", self.weights_sha256,
                 "empty or 8 to 64 hexadecimal digits (a prefix of the sha256)")
        _require(self.weights_url.startswith(("http://", "https://", "file://")),
                 "finetune.weights_url", self.weights_url, "an http(s):// or file:// URL")
        _require(self.checkpoint_every >= 1, "finetune.checkpoint_every",
                 self.checkpoint_every, "an integer >= 1")
        _require(self.epochs >= 0, "finetune.epochs", self.epochs, "an integer >= 0")
        _require(self.lr > 0, "finetune.lr", self.lr, "a number > 0")
        _require(self.batch_size >= 1, "finetune.batch_size", self.batch_size, "an integer >= 1")
        _require(self.image_size >= 32, "finetune.image_size", self.image_size,
                 "an integer >= 32 (VGG16 halves the image five times)")
        _check_device("finetune.device", self.device)


@dataclass(frozen=True)
class ExtractConfig:
    """How fc1 features are computed; none of it changes which frames or features are written.

    `batch_size` and `workers` have an automatic value (0 and -1) because the right choice
    depends on the machine that runs the stage, not on the experiment: see
    `pipeline.features.extract.auto_batch_size` and `auto_workers`.
    """

    # frames per forward pass; 0 = auto: 256 on a CUDA GPU with >= 40 GB, 128 with >= 16 GB,
    # else 64; 64 on CPU
    batch_size: int = 0
    # processes that read image blocks from HDF5 and convert them while the network runs;
    # -1 = auto: one per core up to 8 on CUDA, none on CPU (the network dominates there);
    # 0 = read in the main process
    workers: int = -1
    device: str = "auto"
    # autocast: auto = bf16 where native, else fp32; or bf16, fp32 (see docs/features.md for
    # the error bf16 introduces in the features)
    precision: Precision = "auto"

    def check(self) -> None:
        _require(self.batch_size >= 0, "extract.batch_size", self.batch_size,
                 "an integer >= 1, or 0 for auto (sized to the device)")
        _require(self.workers >= -1, "extract.workers", self.workers,
                 "an integer >= 0 (0 = read in the main process), or -1 for auto")
        _check_device("extract.device", self.device)


@dataclass(frozen=True)
class TrainConfig:
    """The generative models' hyper-parameters (Section 4 and Appendix C)."""

    models: tuple[str, ...] = VAE_MODELS
    alpha: float = 1.0  # eq. (3): weight of log q(y|x,w) on labelled data
    beta: float = 1.0  # eq. (4): weight of the KL terms of SS-HMVAE-kl
    epochs: int = 200
    lr: float = 1e-4
    batch_size: int = 128  # unlabelled examples per step
    labeled_batch_size: int = 128  # labelled examples per step (capped at the labelled count)
    hidden: int = 1024  # Appendix C: every DkBR layer has 1024 units
    a_dim: int = 1024  # Appendix C: f_mu of q(a|x,w) is D1024
    z_dim: int = 1024  # Appendix C: f_mu of q(z|a,y) is D1024
    dropout: float = 0.5  # Appendix C: q(y|a) has Dropout0.5
    # p(x|.) of the features: gaussian_fixed (unit variance: Appendix C gives p(x|a) only an
    # f_mu, a mean-only decoder), gaussian (learned variance) or bernoulli (docs/models.md,
    # "Choices the paper leaves open")
    likelihood: Likelihood = "gaussian_fixed"
    unlabeled_y: UnlabeledY = "gumbel"
    temperature: float = 0.1  # Gumbel-softmax temperature (the authors' code uses 0.1)
    iterative_steps: int = 100  # Appendix D
    # Appendix D reconstructs the missing modality "by sampling from the generative model
    # p(x|a)"; "mean" sets it to the mean of p(x|a) instead
    iterative_fill: Fill = "sample"
    # q(y|x) = E_q(a|x)[q(y|a)]: monte_carlo averages predict_samples draws of a,
    # posterior_mean takes q(y | E[a]) (models whose classifier sits behind a latent)
    prediction: Prediction = "monte_carlo"
    predict_samples: int = 100
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    precision: Precision = "auto"  # autocast on the training device (docs/models.md)
    # torch.compile the loss: auto = on CUDA (fewer, fused kernels; minutes to compile),
    # never on the CPU by default (a minute to compile, and its own random numbers)
    compile: Compile = "auto"
    seed: int = 0
    device: str = "auto"

    def check(self) -> None:
        unknown = [m for m in self.models if m not in VAE_MODELS]
        _require(not unknown and len(self.models) > 0, "train.models", list(self.models),
                 f"a non-empty list of {', '.join(VAE_MODELS)}")
        _require(self.alpha >= 0, "train.alpha", self.alpha, "a number >= 0")
        _require(self.beta >= 0, "train.beta", self.beta, "a number >= 0")
        _require(self.epochs >= 1, "train.epochs", self.epochs, "an integer >= 1")
        _require(self.lr > 0, "train.lr", self.lr, "a number > 0")
        for key in ("batch_size", "labeled_batch_size", "hidden", "a_dim", "z_dim"):
            _require(getattr(self, key) >= 1, f"train.{key}", getattr(self, key),
                     "an integer >= 1")
        _require(0 <= self.dropout < 1, "train.dropout", self.dropout, "a fraction in [0, 1)")
        _require(self.temperature > 0, "train.temperature", self.temperature, "a number > 0")
        _require(self.iterative_steps >= 0, "train.iterative_steps", self.iterative_steps,
                 "an integer >= 0")
        _require(self.predict_samples >= 1, "train.predict_samples", self.predict_samples,
                 "an integer >= 1")
        _require(self.grad_clip >= 0, "train.grad_clip", self.grad_clip, "a number >= 0")
        _check_device("train.device", self.device)


@dataclass(frozen=True)
class ClassicalConfig:
    """The classical peers (pipeline/classical, docs/models.md): co-training of linear SVMs
    and label spreading. None of these numbers is the paper's (it copies its co-training rows
    from Cheng et al.); each is this project's, and docs/models.md says how it was set."""

    models: tuple[str, ...] = CLASSICAL_MODELS
    pca_dims: int = 256  # per view: principal components the SVMs and the kNN graph see
    rounds: int = 10  # co-training rounds at most
    quota: int = 0  # per category, view and round; 0 = spread the pool over `rounds`
    candidates: int = 5  # diverse rule: cluster the candidates * quota most confident
    penalty: float = 1e-2  # the SVMs' L2 penalty (SGDClassifier's alpha)
    svm_epochs: int = 20  # SGD passes over each round's training set
    # The round kept is the one with the best accuracy on labelled rows held out in turn
    # (validation_folds folds of the labelled rows; ties -> the earlier round, 0 = the
    # labelled-only SVM)
    validation_folds: int = 3
    spread_neighbours: int = 10  # label spreading's kNN graph
    spread_alpha: float = 0.2  # label spreading's clamping (scikit-learn's default)
    seed: int = 0

    def check(self) -> None:
        unknown = [m for m in self.models if m not in CLASSICAL_MODELS]
        _require(not unknown and len(self.models) > 0, "classical.models", list(self.models),
                 f"a non-empty list of {', '.join(CLASSICAL_MODELS)}")
        for key in ("pca_dims", "rounds", "candidates", "svm_epochs",
                    "spread_neighbours"):
            _require(getattr(self, key) >= 1, f"classical.{key}", getattr(self, key),
                     "an integer >= 1")
        _require(self.quota >= 0, "classical.quota", self.quota,
                 "an integer >= 0 (0 = spread the pool over the rounds)")
        _require(self.penalty > 0, "classical.penalty", self.penalty, "a number > 0")
        _require(self.validation_folds >= 2, "classical.validation_folds",
                 self.validation_folds, "an integer >= 2")
        _require(0 < self.spread_alpha < 1, "classical.spread_alpha", self.spread_alpha,
                 "a fraction in (0, 1)")


@dataclass(frozen=True)
class LaunchConfig:
    """How the finetune and train stages run: one process, or data-parallel under torchrun."""

    processes: int = 1  # per machine; > 1 restarts the stage under torchrun (one GPU each)
    backend: Backend = "auto"  # auto: nccl on CUDA, gloo on CPU

    def check(self) -> None:
        _require(self.processes >= 1, "launch.processes", self.processes, "an integer >= 1")


@dataclass(frozen=True)
class ReportConfig:
    paper_reference: bool = True  # print the paper's Table 1 beside ours

    def check(self) -> None:
        pass


@dataclass(frozen=True)
class Config:
    profile: str = "paper"
    download: DownloadConfig = field(default_factory=DownloadConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    classical: ClassicalConfig = field(default_factory=ClassicalConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))

    def dump(self, path: str | Path) -> None:
        """Write the effective configuration next to a stage's outputs."""
        write_json(path, self.to_dict(), sort_keys=True)


# section name -> its class: a new section is one dataclass, one field of Config above and
# one section of params.yaml (with `{}` in each profile); nothing else here names sections.
SECTIONS: dict[str, type] = {name: cls for name, cls in typing.get_type_hints(Config).items()
                             if name != "profile"}


def load_config(
    path: str | Path | None = "params.yaml",
    overrides: Iterable[str] = (),
) -> Config:
    """Read `path` (None: the paper's values), apply its profile, then `overrides`.

    Fails before any work with a `ConfigError` naming the key and what is allowed.
    """
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as err:
            raise ConfigError(f"{where}: parameters file not found") from err
        except IsADirectoryError as err:
            raise ConfigError(f"{where}: is a folder, not a parameters file") from err
        except UnicodeDecodeError as err:
            raise ConfigError(f"{where}: not a text file ({err.reason} at byte "
                              f"{err.start})") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"{where}: not valid YAML: {err}") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping of sections, got {type(raw).__name__}")
    raw = dict(raw)
    profiles = raw.pop("profiles", {}) or {}
    sets = [_parse_override(item) for item in overrides]
    # `--set profile=...` must pick the profile before the profile's values are applied.
    profile = next((v for k, v in reversed(sets) if k == "profile"), raw.pop("profile", "paper"))
    raw.pop("profile", None)
    # `trials` (top level) is what dvc.yaml's matrix runs; checked against split.trials below.
    dvc_trials = next((v for k, v in reversed(sets) if k == "trials"), raw.pop("trials", None))
    raw.pop("trials", None)
    if not isinstance(profiles, dict):
        raise ConfigError(f"{where}: profiles: expected a mapping, got {type(profiles).__name__}")
    if profile != "paper" and profile not in profiles:
        allowed = ", ".join(sorted({"paper", *profiles}))
        origin = "--set" if any(k == "profile" for k, _ in sets) else where
        raise ConfigError(f"{origin}: profile: unknown profile {profile!r}; "
                          f"expected one of {allowed}")
    chosen = profiles.get(profile) or {}
    if not isinstance(chosen, dict):
        raise ConfigError(f"{where}: profiles.{profile}: expected a mapping of sections, "
                          f"got {chosen!r}")
    for section, values in chosen.items():
        origin = f"{where}: profiles.{profile}.{section}"
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: expected a mapping of keys, got {values!r}")
        if section in ("train", "classical") and "models" in values:
            raise ConfigError(f"{origin}.models: a profile cannot change {section}.models "
                              f"(dvc.yaml reads {section}.models itself); edit {section}.models")
        for key, value in values.items():
            _refuse_shadowed(raw, section, key, value, profile, where)
            _assign(raw, f"{section}.{key}", value, origin)
    origins = {}  # section.key -> where its value came from, when not the file
    for key, value in sets:
        if key not in ("profile", "trials"):
            _assign(raw, key, value, "--set")
            origins[key] = "--set"
    sections = {}
    for name, section in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"{where}: unknown section {name!r}; expected one of "
                              f"{', '.join(SECTIONS)}")
        sections[name] = _build(SECTIONS[name], section, name, where, origins)
    config = Config(profile=str(profile), **sections)
    for name in SECTIONS:
        try:
            getattr(config, name).check()
        except ConfigError as err:
            raise ConfigError(f"{origins.get(err.key, where)}: {err}") from None
    _check_dvc_keys(config, profiles, dvc_trials,
                    "--set" if any(k == "trials" for k, _ in sets) else where)
    return config


def _check_dvc_keys(config: Config, profiles: dict[str, Any], trials: Any, where: str) -> None:
    """What dvc.yaml reads by templating must agree with the effective configuration.

    dvc.yaml runs `trials` (top level) and tracks `profiles.<profile>.<section>` for each
    stage, so a params file that has either must keep them consistent with the rest.
    """
    if trials is not None and (not isinstance(trials, list)
                               or tuple(trials) != config.split.trials):
        raise ConfigError(f"{where}: trials: expected the effective split.trials "
                          f"{list(config.split.trials)} of profile {config.profile!r} (dvc.yaml "
                          f"runs one stage per entry of `trials`), got {trials!r}")
    if trials is not None and config.profile in profiles:
        missing = [s for s in SECTIONS if s not in (profiles[config.profile] or {})]
        if missing:
            raise ConfigError(f"{where}: profiles.{config.profile}: missing sections "
                              f"{', '.join(missing)}; list every section, `{{}}` where the "
                              "profile changes nothing (dvc.yaml tracks "
                              "profiles.<profile>.<section>)")


def _refuse_shadowed(raw: dict[str, Any], section: str, key: str, value: Any, profile: str,
                     where: str) -> None:
    """Fail when the file sets `section.key` away from the paper's value and the profile wins.

    The sections hold the paper's values (the dataclass defaults), so a differing value was
    set on purpose (`dvc exp run -S train.epochs=5`, an edit) and the profile would discard
    it silently. The message names the key to set instead.
    """
    values = raw.get(section)
    if not isinstance(values, dict) or key not in values or section not in SECTIONS:
        return
    cls = SECTIONS[section]
    if key not in {f.name for f in dataclasses.fields(cls)}:
        return  # an unknown key: _build names it
    hint = typing.get_type_hints(cls)[key]
    mine = _coerce(values[key], hint, f"{where}: {section}.{key}")
    if mine != getattr(cls(), key):
        raise ConfigError(
            f"{where}: {section}.{key}: {_yaml(values[key])} has no effect, profile "
            f"{profile!r} sets profiles.{profile}.{section}.{key}: {_yaml(value)}; set "
            f"profiles.{profile}.{section}.{key} instead (dvc exp run -S "
            f"profiles.{profile}.{section}.{key}=...), or leave {section}.{key} at the "
            f"paper's {_yaml(plain(getattr(cls(), key)))}")


def _yaml(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.alpha=0.5")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {err}") from err
    return key.strip(), value


def _assign(raw: dict[str, Any], dotted: str, value: Any, origin: str) -> None:
    section, sep, key = dotted.partition(".")
    if not sep or "." in key:
        raise ConfigError(f"{origin}: {dotted!r}: expected section.key, e.g. train.alpha")
    if section not in SECTIONS:
        raise ConfigError(f"{origin}: {dotted!r}: unknown section {section!r}; expected one of "
                          f"{', '.join(SECTIONS)}")
    target = raw.setdefault(section, {})
    if not isinstance(target, dict):
        raise ConfigError(f"{origin}: section {section!r} is not a mapping")
    target[key] = value


def _build(cls: type, data: Any, section: str, where: str,
           origins: Mapping[str, str] | None = None) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: {section}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        origin = (origins or {}).get(f"{section}.{key}", where)
        if key not in known:
            raise ConfigError(f"{origin}: unknown key {section}.{key}; expected one of "
                              f"{', '.join(sorted(known))}")
        values[key] = _coerce(value, hints[key], f"{origin}: {section}.{key}")
    return cls(**values)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Check `value` against a type hint; the only conversion is int -> float."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            *others, last = typing.get_args(hint)
            raise ConfigError(f"{name}: expected {', '.join(others)} or {last}, got {value!r}")
        return value
    if origin is tuple:
        (item_hint, _) = typing.get_args(hint)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return tuple(_coerce(v, item_hint, f"{name}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"{name}: union types are not supported in configs")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float's range
            number = math.inf
        if not math.isfinite(number):  # no key means anything by .inf or .nan
            raise ConfigError(f"{name}: expected a finite number, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{name}: unsupported type hint {hint!r}")


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        err = ConfigError(f"{key}: expected {expected}, got {value!r}")
        err.key = key  # lets load_config name where the value came from
        raise err


def _check_device(key: str, value: str) -> None:
    ok = value in DEVICES or value.startswith("cuda:")
    _require(ok, key, value, "auto, cpu, cuda or cuda:N")


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)
