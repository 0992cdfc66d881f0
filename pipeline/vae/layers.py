"""Building blocks shared by every model (Appendix B and C of the paper).

- `DkBR`: Linear(k) -> BatchNorm -> ReLU, the paper's only hidden layer type.
- `Trunk`: the paper's `(I, J)` notation: each named input through its own DkBR, the results
  concatenated, then optional further DkBR layers (`f_MLP`).
- `GaussianHead`: `N(f_mu(h), diag(Softplus(f_sigma2(h))))`, returned as a
  `torch.distributions.Independent(Normal)` so log-densities and KLs come from torch.
- `CategoricalHead`: logits of a categorical, with the dropout of q(y|a).
- `LikelihoodHead`: p(x|.) for a 4096-d feature vector: Gaussian with a learned variance,
  Gaussian with unit variance (Appendix C gives p(x|a) only an f_mu), or Bernoulli.

Every head's output layer runs in fp32 with autocast off, so that under bf16 autocast only
the hidden layers are rounded: a bf16 decoder mean is off by ~0.4 %, which a variance as
small as 1e-3 turns into a large error in log p(x|.), summed over 4096 dimensions.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal

# Softplus outputs can underflow to 0; a floor keeps log-densities and KLs finite. The
# decoder floor is larger: many fc1 features are exactly 0 on every example, and a
# variance allowed to vanish there would make log p(x|a) grow without bound.
ENCODER_MIN_VARIANCE = 1e-6
DECODER_MIN_VARIANCE = 1e-3


class DkBR(nn.Sequential):
    """Linear -> BatchNorm -> ReLU (the paper's `DkBR`)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(nn.Linear(in_features, out_features), nn.BatchNorm1d(out_features),
                         nn.ReLU())


class Trunk(nn.Module):
    """`(x-DkBR, y-DkBR)-DkBR...`: one DkBR per named input, concatenated, then `depth` more."""

    def __init__(self, inputs: Mapping[str, int], hidden: int, depth: int = 0) -> None:
        super().__init__()
        self.names = list(inputs)
        self.branches = nn.ModuleDict({name: DkBR(dim, hidden) for name, dim in inputs.items()})
        width = hidden * len(inputs)
        layers = []
        for _ in range(depth):
            layers.append(DkBR(width, hidden))
            width = hidden
        self.tail = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        missing = set(self.names) - set(inputs)
        if missing:
            raise ValueError(f"expected inputs {self.names}, missing {sorted(missing)}")
        return self.join({name: self.branches[name](inputs[name]) for name in self.names})

    def join(self, branched: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The trunk from its branches' outputs (`branches[name](input)`), so that a caller
        whose input stays fixed over many passes computes its branch once."""
        return self.tail(torch.cat([branched[name] for name in self.names], dim=-1))


def fp32(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """`layer(h)` in fp32 whatever the autocast state (an output head)."""
    with torch.autocast(h.device.type, enabled=False):
        return layer(h.float())


class GaussianHead(nn.Module):
    """Appendix B: mu = f_mu(h), sigma^2 = Softplus(f_sigma2(h)); a diagonal Gaussian."""

    def __init__(self, in_features: int, out_features: int,
                 min_variance: float = ENCODER_MIN_VARIANCE) -> None:
        super().__init__()
        self.f_mu = nn.Linear(in_features, out_features)
        self.f_sigma2 = nn.Linear(in_features, out_features)
        self.min_variance = min_variance

    def forward(self, h: torch.Tensor) -> Independent:
        mu = fp32(self.f_mu, h)
        variance = nn.functional.softplus(fp32(self.f_sigma2, h)) + self.min_variance
        return Independent(Normal(mu, variance.sqrt()), 1)


class UnitVarianceGaussianHead(nn.Module):
    """N(f_mu(h), I): the mean-only decoder of Appendix C, on standardised features."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.f_mu = nn.Linear(in_features, out_features)

    def forward(self, h: torch.Tensor) -> Independent:
        mu = fp32(self.f_mu, h)
        return Independent(Normal(mu, torch.ones_like(mu)), 1)


class CategoricalHead(nn.Module):
    """Logits of q(y|.): `Dropout(p) -> D_K` (Appendix C: `a-D1024BR-Dropout0.5`, f_mu D51)."""

    def __init__(self, in_features: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, n_classes))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return fp32(self.net, h)


class BernoulliHead(nn.Module):
    """B(Sigmoid(f_mu(h))), scored on rescaled features in [0, 1] (soft targets)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.f_mu = nn.Linear(in_features, out_features)

    def forward(self, h: torch.Tensor) -> Independent:
        logits = fp32(self.f_mu, h)
        return Independent(Bernoulli(logits=logits, validate_args=False), 1)


LIKELIHOOD_HEADS = {
    "gaussian": lambda i, o: GaussianHead(i, o, min_variance=DECODER_MIN_VARIANCE),
    "gaussian_fixed": UnitVarianceGaussianHead,
    "bernoulli": BernoulliHead,
}


class LikelihoodHead(nn.Module):
    """p(x|.) of a feature vector, by `train.likelihood` (`LIKELIHOOD_HEADS`)."""

    def __init__(self, in_features: int, out_features: int, kind: str) -> None:
        super().__init__()
        if kind not in LIKELIHOOD_HEADS:
            raise ValueError(f"likelihood: expected one of {', '.join(LIKELIHOOD_HEADS)}, "
                             f"got {kind!r}")
        self.kind = kind
        self.head = LIKELIHOOD_HEADS[kind](in_features, out_features)

    def forward(self, h: torch.Tensor) -> Independent:
        return self.head(h)


def mean_of(dist: Independent) -> torch.Tensor:
    """The mean of a Gaussian or Bernoulli head's output (for reconstructions)."""
    return dist.base_dist.mean
