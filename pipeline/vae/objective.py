"""The semi-supervised objective shared by every generative model (equations (1)-(3)).

A model supplies two pieces and this module turns them into the paper's objective:

- `encode(x)`: what the inference model computes before y is known, as a dict of tensors
  with the batch first; it always holds `logits` of the classifier q(y|.).
- `elbo_terms(x, y, ctx)`: the labelled bound L(x, y) as named per-example terms whose
  sum is the bound (reconstruction, Monte-Carlo log-ratios, analytic KLs, log p(y)).

Then, with means over the labelled batch (N) and the unlabelled batch (M) as in eq. (3),

    J = mean_l [ L(x, y) + alpha * log q(y|x) ] + mean_u [ U(x) ] + model-specific terms

where U(x) = E_q(y|x)[L(x, y)] + H(q(y|x)). With `unlabeled_y="gumbel"` (the paper) y is
one Gumbel-softmax sample and U ~ L(x, y~) - log q(y~|x); with "enumerate" the
expectation is summed over every class exactly. The loss returned is -J.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Independent, Normal, RelaxedOneHotCategorical, kl_divergence

from pipeline.config import TrainConfig

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Batch:
    """Feature tensors by modality name (scaled), and labels for a labelled batch."""

    x: Tensors
    y: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(next(iter(self.x.values())).shape[0])


@dataclass(frozen=True)
class ObjectiveConfig:
    """How the bound is formed (the train section's values: `TrainConfig` documents them);
    the networks' sizes live with each model."""

    alpha: float = TrainConfig.alpha  # eq. (3)
    beta: float = TrainConfig.beta  # eq. (4), SS-HMVAE-kl only
    # N / (N + M), the labelled set's share of D_L u D_U: eq. (4) weighs every training
    # example the same, so its labelled batch mean gets this weight (`labelled_share`)
    labelled_share: float = 0.5
    unlabeled_y: str = TrainConfig.unlabeled_y
    temperature: float = TrainConfig.temperature


def labelled_share(n_labelled: int, n_unlabelled: int) -> float:
    """N / (N + M) of a trial's training rows: the one place it is computed."""
    return n_labelled / (n_labelled + n_unlabelled)


def standard_normal_like(dist: Independent) -> Independent:
    loc = dist.base_dist.loc
    return Independent(Normal(torch.zeros_like(loc), torch.ones_like(loc)), 1)


def kl_to_standard_normal(q: Independent) -> torch.Tensor:
    """KL(q || N(0, I)) per example, analytic."""
    return kl_divergence(q, standard_normal_like(q))


def log_uniform_prior(y: torch.Tensor) -> torch.Tensor:
    """log p(y) for p(y) = Cat(1/K); y one-hot or relaxed (rows sum to 1)."""
    return -math.log(y.shape[-1]) * y.sum(-1)


def log_q_of(y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log q(y|.) of a one-hot or relaxed y: the dot product with log-softmax(logits).

    Categorical.log_prob would reject a relaxed sample; the dot product is its exact value
    on one-hot vectors and the usual score of a Concrete sample.
    """
    return (y * torch.log_softmax(logits, dim=-1)).sum(-1)


def one_hot(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    return nn.functional.one_hot(y, n_classes).float()


def set_mean(labelled: torch.Tensor, unlabelled: torch.Tensor, labelled_share: float
             ) -> torch.Tensor:
    """Unbiased estimate of the mean over D_L u D_U from one batch of each set."""
    return labelled_share * labelled.mean() + (1 - labelled_share) * unlabelled.mean()


def shared_noise(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None, *,
                 device: torch.device, uniform: bool = False) -> torch.Tensor:
    """Standard normal (or uniform on [0, 1)) noise of `shape` [N, ...] whose rows are one
    draw shared by all N (common random numbers): a row's draws depend on the generator's
    seed and on how many draws came before, never on the other rows of its batch, so a
    frame's prediction depends only on that frame and the model (evaluate, predict)."""
    sample = torch.rand if uniform else torch.randn
    return sample(shape[1:], generator=generator, device=device).expand(shape)


def class_log_probs(q_a: Independent, classifier: Callable[[torch.Tensor], torch.Tensor], *,
                    samples: int = 0, generator: torch.Generator | None = None
                    ) -> torch.Tensor:
    """log q(y|x) = log E_q(a|x)[q(y|a)] for a classifier behind the latent a.

    samples = 0: the posterior-mean shortcut q(y | E[a]); samples = S: the Monte-Carlo
    average of the class probabilities over S draws of a (the paper's definition).
    """
    if samples == 0:
        return torch.log_softmax(classifier(q_a.mean), -1)
    loc, scale = q_a.base_dist.loc, q_a.base_dist.scale
    probs = 0.0
    for _ in range(samples):
        eps = shared_noise(loc.shape, generator, device=loc.device).to(loc.dtype)
        probs = probs + torch.softmax(classifier(loc + scale * eps), -1)
    return torch.log(probs / samples)


class SemiSupervisedVAE(nn.Module):
    """Base class: the bound of eq. (3) from a model's `encode` and `elbo_terms`."""

    modalities: list[str]
    n_classes: int
    latent_classifier = False  # True where q(y|.) sits behind a latent (samples apply)

    def __init__(self, objective: ObjectiveConfig) -> None:
        super().__init__()
        self.objective = objective

    # -- to be provided by each model -------------------------------------------------
    def encode(self, x: Tensors) -> Tensors:
        raise NotImplementedError

    def elbo_terms(self, x: Tensors, y: torch.Tensor, ctx: Tensors) -> Tensors:
        raise NotImplementedError

    def extra_objective(self, labelled: Batch, unlabelled: Batch, labelled_ctx: Tensors,
                        unlabelled_ctx: Tensors) -> Tensors:
        """Model-specific terms added to J, already weighted (eq. (4) for SS-HMVAE-kl)."""
        return {}

    # -- shared ---------------------------------------------------------------------------
    def labelled_bound(self, batch: Batch) -> tuple[Tensors, Tensors]:
        """Per-example terms of L(x, y) and the classifier's log q(y|x); and the context."""
        if batch.y is None:
            raise ValueError("a labelled batch needs y")
        ctx = self.encode(batch.x)
        y = one_hot(batch.y, self.n_classes)
        terms = self.elbo_terms(batch.x, y, ctx)
        terms["log_q_y"] = log_q_of(y, ctx["logits"])
        return terms, ctx

    def unlabelled_bound(self, batch: Batch) -> tuple[Tensors, Tensors]:
        """Per-example terms of U(x); their sum is the bound."""
        ctx = self.encode(batch.x)
        logits = ctx["logits"]
        if self.objective.unlabeled_y == "gumbel":
            # torch.full fills on the device; torch.tensor would copy from the host and
            # wait for the GPU every step
            temperature = torch.full((), self.objective.temperature, device=logits.device)
            y = RelaxedOneHotCategorical(temperature, logits=logits).rsample()
            terms = self.elbo_terms(batch.x, y, ctx)
            terms["-log_q_y"] = -log_q_of(y, logits)
            return terms, ctx
        return self._enumerated_bound(batch.x, ctx), ctx

    def _enumerated_bound(self, x: Tensors, ctx: Tensors) -> Tensors:
        """U(x) = sum_k q(k|x) L(x, k) + H(q(y|x)), every class evaluated."""
        k, n = self.n_classes, len(ctx["logits"])
        repeat = {name: t.repeat_interleave(k, 0) for name, t in x.items()}
        ctx_repeat = {name: t.repeat_interleave(k, 0) for name, t in ctx.items()}
        y = torch.eye(k, device=ctx["logits"].device).repeat(n, 1)
        q = torch.softmax(ctx["logits"], -1)
        terms = {name: (q * t.view(n, k)).sum(-1)
                 for name, t in self.elbo_terms(repeat, y, ctx_repeat).items()}
        terms["entropy"] = -(q * torch.log_softmax(ctx["logits"], -1)).sum(-1)
        return terms

    def loss(self, labelled: Batch, unlabelled: Batch) -> tuple[torch.Tensor, Tensors]:
        """-J of eq. (3) (and (4) where a model adds terms), with every term for logging."""
        l_terms, l_ctx = self.labelled_bound(labelled)
        u_terms, u_ctx = self.unlabelled_bound(unlabelled)
        log_q_y = l_terms.pop("log_q_y")
        bound_l = torch.stack(list(l_terms.values())).sum(0).mean()
        bound_u = torch.stack(list(u_terms.values())).sum(0).mean()
        classifier = log_q_y.mean()
        extra = self.extra_objective(labelled, unlabelled, l_ctx, u_ctx)
        objective = bound_l + self.objective.alpha * classifier + bound_u
        for value in extra.values():
            objective = objective + value
        logged = {f"labelled/{k}": v.mean().detach() for k, v in l_terms.items()}
        logged |= {f"unlabelled/{k}": v.mean().detach() for k, v in u_terms.items()}
        logged |= {k: v.detach() for k, v in extra.items()}
        logged |= {"labelled/bound": bound_l.detach(), "unlabelled/bound": bound_u.detach(),
                   "classifier/log_q_y": classifier.detach()}
        return -objective, logged

    def classify(self, x: Tensors, method: str = "joint", *, samples: int = 0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Class log-probabilities from the given modalities (eval mode); `samples`: draws
        of the latent averaged over where the classifier sits behind one (`class_log_probs`)."""
        raise NotImplementedError
