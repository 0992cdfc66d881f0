"""The generative models of Table 1 and the labelled-only baseline, looked up by name.

Every entry builds an `nn.Module` with `loss(labelled, unlabelled) -> (loss, terms)` and
`classify(x, method) -> logits`, and lists the evaluations that fill its row of Table 1:
which modalities are given and how a missing one is handled ("joint": all given;
"zero_fill": the missing one is zeros in the raw feature space; "unimodal": the -kl
model's own encoder; "iterative": Appendix D's iterative sampling).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from pipeline.config import TrainConfig
from pipeline.vae.baseline import LabelledOnly, PerModality, input_key
from pipeline.vae.hmvae import SSHMVAE, SSHMVAEKL
from pipeline.vae.mvae import MVAE
from pipeline.vae.objective import ObjectiveConfig
from pipeline.vae.sdgm import SDGM


@dataclass(frozen=True)
class Evaluation:
    key: str  # metrics key: "rgb", "depth", "rgb+depth"
    inputs: tuple[str, ...]  # the modalities given
    method: str  # "joint", "zero_fill", "unimodal", "iterative"
    primary: bool  # the number Table 1 reports for this model and key


def _each_alone(modalities: list[str], method: str, primary: bool) -> list[Evaluation]:
    return [Evaluation(m, (m,), method, primary) for m in modalities]


def _joint(modalities: list[str]) -> list[Evaluation]:
    return [Evaluation(input_key(modalities), tuple(modalities), "joint", True)]


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[dict[str, int], int, TrainConfig, ObjectiveConfig], nn.Module]
    evaluations: Callable[[list[str]], list[Evaluation]]
    multimodal: bool  # needs two or more modalities (titles: pipeline/titles.py)


def _objective(cfg: TrainConfig, labelled_share: float) -> ObjectiveConfig:
    return ObjectiveConfig(alpha=cfg.alpha, beta=cfg.beta, unlabeled_y=cfg.unlabeled_y,
                           temperature=cfg.temperature, labelled_share=labelled_share)


def _without_a(cls: type[nn.Module]) -> Callable[..., nn.Module]:
    return lambda dims, k, cfg, obj: cls(dims=dims, n_classes=k, objective=obj,
                                         hidden=cfg.hidden, z_dim=cfg.z_dim,
                                         dropout=cfg.dropout, likelihood=cfg.likelihood)


def _with_a(cls: type[nn.Module]) -> Callable[..., nn.Module]:
    return lambda dims, k, cfg, obj: cls(dims=dims, n_classes=k, objective=obj,
                                         hidden=cfg.hidden, a_dim=cfg.a_dim, z_dim=cfg.z_dim,
                                         dropout=cfg.dropout, likelihood=cfg.likelihood)


MODELS: dict[str, ModelSpec] = {
    "m2": ModelSpec(
        build=lambda dims, k, cfg, obj: PerModality(
            dims, lambda d: _without_a(MVAE)(d, k, cfg, obj)),
        evaluations=lambda ms: _each_alone(ms, "joint", True),
        multimodal=False),
    "sdgm": ModelSpec(
        build=lambda dims, k, cfg, obj: PerModality(
            dims, lambda d: _with_a(SDGM)(d, k, cfg, obj)),
        evaluations=lambda ms: _each_alone(ms, "joint", True),
        multimodal=False),
    "ss_mvae": ModelSpec(
        build=_without_a(MVAE),
        evaluations=lambda ms: _joint(ms) + _each_alone(ms, "zero_fill", True),
        multimodal=True),
    "ss_hmvae": ModelSpec(
        build=_with_a(SSHMVAE),
        evaluations=lambda ms: (_joint(ms) + _each_alone(ms, "zero_fill", True)
                                + _each_alone(ms, "iterative", False)),
        multimodal=True),
    "ss_hmvae_kl": ModelSpec(
        build=_with_a(SSHMVAEKL),
        evaluations=lambda ms: (_joint(ms) + _each_alone(ms, "unimodal", True)
                                + _each_alone(ms, "zero_fill", False)),
        multimodal=True),
    "mlp": ModelSpec(
        build=lambda dims, k, cfg, obj: LabelledOnly(dims, k, hidden=cfg.hidden,
                                                     dropout=cfg.dropout),
        evaluations=lambda ms: _each_alone(ms, "joint", True) + _joint(ms),
        multimodal=False),
}


def build_model(name: str, dims: dict[str, int], n_classes: int, cfg: TrainConfig, *,
                labelled_share: float = ObjectiveConfig.labelled_share) -> nn.Module:
    """`labelled_share`: N / (N + M) of the training data (eq. (4)'s weights:
    `objective.labelled_share`)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    spec = MODELS[name]
    if spec.multimodal and len(dims) < 2:
        raise ValueError(f"model {name!r} needs two modalities; the features have {list(dims)}")
    return spec.build(dims, n_classes, cfg, _objective(cfg, labelled_share))
