"""SS-HMVAE and SS-HMVAE-kl (Suzuki & Matsuo, Section 3, Appendices C and D).

Generative model:  p(y) = Cat(1/K),  p(z) = N(0, I),  p(a | z, y),  p(x | a),  p(w | a).
Inference model:   q(a | x, w),  q(y | a),  q(z | a, y).
Labelled bound (1): L = E_q[ log p(x|a) + log p(w|a) + log p(a|z,y) - log q(a|x,w) ]
                        + log p(y) - KL(q(z|a,y) || p(z)).
Unlabelled (2), objective (3): see `objective.py`; q(y|x,w) = E_q(a|x,w)[q(y|a)].

SS-HMVAE-kl (4) adds one encoder per modality, q(a|x) and q(a|w), and subtracts
beta / (M + N) * the sum over D_L u D_U of
    KL(q(a|x,w) || q(a|x)) + KL(q(a|x,w) || q(a|w)),
estimated from a labelled and an unlabelled batch, each batch mean weighted by its set's
share of the training set (every example weighs the same, as in the paper), so that
q(y|x) = E_q(a|x)[q(y|a)] classifies from one modality. The gradient of that term reaches
both the joint and the unimodal encoders (as in JMVAE-kl); nothing else reaches the
unimodal ones.

A missing modality at test time is handled by zero-fill (the caller fills it), by the
unimodal encoders (`method="unimodal"`, -kl only), or by iterative sampling (Appendix D,
`impute`). The classifier sits behind a: `classify(..., samples=S)` averages q(y|a) over S
draws of a, `samples=0` uses q(y | E[a]).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.distributions import Independent, Normal, kl_divergence

from pipeline.config import FILLS
from pipeline.vae.layers import CategoricalHead, GaussianHead, LikelihoodHead, Trunk, mean_of
from pipeline.vae.objective import (
    Batch,
    ObjectiveConfig,
    SemiSupervisedVAE,
    Tensors,
    class_log_probs,
    kl_to_standard_normal,
    log_uniform_prior,
    set_mean,
    shared_noise,
)


class SSHMVAE(SemiSupervisedVAE):
    latent_classifier = True
    def __init__(self, *, dims: Mapping[str, int], n_classes: int, objective: ObjectiveConfig,
                 hidden: int, a_dim: int, z_dim: int, dropout: float,
                 likelihood: str) -> None:
        super().__init__(objective)
        if len(dims) < 2:
            raise ValueError(f"{type(self).__name__} needs two modalities, got {list(dims)}")
        self.modalities = list(dims)
        self.dims = dict(dims)
        self.n_classes = n_classes
        self.likelihood = likelihood
        k = n_classes
        self.q_a_xw = Trunk(dims, hidden)  # (x-D1024BR, w-D1024BR)
        self.q_a_xw_head = GaussianHead(self.q_a_xw.out_features, a_dim)
        self.q_y_a = Trunk({"a": a_dim}, hidden)  # a-D1024BR-Dropout0.5, f_mu D51
        self.q_y_a_head = CategoricalHead(hidden, k, dropout)
        self.q_z_ay = Trunk({"a": a_dim, "y": k}, hidden)  # (a-D1024BR, y-D1024BR)
        self.q_z_ay_head = GaussianHead(self.q_z_ay.out_features, z_dim)
        self.p_a_zy = Trunk({"z": z_dim, "y": k}, hidden)  # (z-D1024BR, y-D1024BR)
        self.p_a_zy_head = GaussianHead(self.p_a_zy.out_features, a_dim)
        self.p_x_a = nn.ModuleDict(  # a-D1024BR-D1024BR
            {m: Trunk({"a": a_dim}, hidden, depth=1) for m in dims})
        self.p_x_a_head = nn.ModuleDict(
            {m: LikelihoodHead(hidden, dim, likelihood) for m, dim in dims.items()})

    def q_a(self, x: Tensors) -> Independent:
        return self.q_a_xw_head(self.q_a_xw(**x))

    def p_x(self, m: str, a: torch.Tensor) -> Independent:
        return self.p_x_a_head[m](self.p_x_a[m](a=a))

    def encode(self, x: Tensors) -> Tensors:
        q_a = self.q_a(x)
        a = q_a.rsample()
        return {"a": a, "log_q_a": q_a.log_prob(a), "logits": self.q_y_a_head(self.q_y_a(a=a)),
                "q_a_loc": q_a.base_dist.loc, "q_a_scale": q_a.base_dist.scale}

    def elbo_terms(self, x: Tensors, y: torch.Tensor, ctx: Tensors) -> Tensors:
        a = ctx["a"]
        terms = {f"log_p_{m}": self.p_x(m, a).log_prob(x[m]) for m in self.modalities}
        q_z = self.q_z_ay_head(self.q_z_ay(a=a, y=y))
        z = q_z.rsample()
        p_a = self.p_a_zy_head(self.p_a_zy(z=z, y=y))
        terms["log_p_a-log_q_a"] = p_a.log_prob(a) - ctx["log_q_a"]
        terms["-kl_z"] = -kl_to_standard_normal(q_z)
        terms["log_p_y"] = log_uniform_prior(y)
        return terms

    def q_y_a_logits(self, a: torch.Tensor) -> torch.Tensor:
        return self.q_y_a_head(self.q_y_a(a=a))

    def classify(self, x: Tensors, method: str = "joint", *, samples: int = 0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        if method != "joint":
            raise ValueError(f"{type(self).__name__}: unknown method {method!r}")
        return class_log_probs(self.q_a(x), self.q_y_a_logits, samples=samples,
                               generator=generator)

    @torch.no_grad()
    def impute(self, x: Tensors, missing: str, steps: int,
               generator: torch.Generator | None = None, fill: str = "mean") -> torch.Tensor:
        """Appendix D: fill modality `missing` by alternating q(a|x,w) and p(x|a).

        Starts from noise drawn like the scaled features (standard normal for the Gaussian
        likelihoods, uniform on [0, 1] for the Bernoulli one), every draw shared by the rows
        (`shared_noise`: a row's chain does not depend on the others); each step samples a from
        q(a|x,w) and sets the missing input to the mean of p(x|a) (`fill="mean"`) or to a
        draw from it (`fill="sample"`, as Appendix D writes it).
        """
        if fill not in FILLS:
            raise ValueError(f"fill: expected one of {', '.join(FILLS)}, got {fill!r}")
        given = next(iter(x.values()))
        shape = (given.shape[0], self.dims[missing])
        value = shared_noise(shape, generator, device=given.device,
                             uniform=self.likelihood == "bernoulli")
        trunk = self.q_a_xw
        # the given modalities' branches of q(a|x,w) see the same input at every step: once
        fixed = {m: trunk.branches[m](v) for m, v in x.items()}
        for _ in range(steps):
            q_a = self.q_a_xw_head(trunk.join({**fixed, missing: trunk.branches[missing](value)}))
            a = draw(q_a, generator)
            p_x = self.p_x(missing, a)
            value = (mean_of(p_x) if fill == "mean" else draw(p_x, generator)).to(given.dtype)
        return value


def draw(dist: Independent, generator: torch.Generator | None) -> torch.Tensor:
    """One sample of a Gaussian or Bernoulli head's output, from `generator`, with the noise
    shared by the rows (`shared_noise`)."""
    base = dist.base_dist
    if isinstance(base, Normal):
        return base.loc + base.scale * shared_noise(base.loc.shape, generator,
                                                    device=base.loc.device)
    probs = base.probs
    uniform = shared_noise(probs.shape, generator, device=probs.device, uniform=True)
    return (uniform < probs).to(probs.dtype)


class SSHMVAEKL(SSHMVAE):
    def __init__(self, *, dims: Mapping[str, int], n_classes: int, objective: ObjectiveConfig,
                 hidden: int, a_dim: int, z_dim: int, dropout: float,
                 likelihood: str) -> None:
        super().__init__(dims=dims, n_classes=n_classes, objective=objective, hidden=hidden,
                         a_dim=a_dim, z_dim=z_dim, dropout=dropout, likelihood=likelihood)
        # q(a|x), q(a|w): x or w-D1024BR, f_mu and f_sigma2 D1024 (Appendix C)
        self.q_a_m = nn.ModuleDict({m: Trunk({"x": dim}, hidden) for m, dim in dims.items()})
        self.q_a_m_head = nn.ModuleDict({m: GaussianHead(hidden, a_dim) for m in dims})

    def q_a_unimodal(self, m: str, x: torch.Tensor) -> Independent:
        return self.q_a_m_head[m](self.q_a_m[m](x=x))

    def divergence(self, x: Tensors, ctx: Tensors) -> torch.Tensor:
        """Per example: sum over modalities of KL(q(a|x,w) || q(a|x_m)), analytic."""
        joint = Independent(Normal(ctx["q_a_loc"], ctx["q_a_scale"]), 1)
        return sum(kl_divergence(joint, self.q_a_unimodal(m, x[m])) for m in self.modalities)

    def extra_objective(self, labelled: Batch, unlabelled: Batch, labelled_ctx: Tensors,
                        unlabelled_ctx: Tensors) -> Tensors:
        # eq. (4): - beta / (M + N) * J_div, each set's batch mean weighted by its share
        div = set_mean(self.divergence(labelled.x, labelled_ctx),
                       self.divergence(unlabelled.x, unlabelled_ctx),
                       self.objective.labelled_share)
        return {"-beta*kl_a": -self.objective.beta * div}

    def classify(self, x: Tensors, method: str = "joint", *, samples: int = 0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        if method == "unimodal":
            if len(x) != 1:
                raise ValueError(f"unimodal classification takes one modality, got {list(x)}")
            (m, xm), = x.items()
            return class_log_probs(self.q_a_unimodal(m, xm), self.q_y_a_logits,
                                   samples=samples, generator=generator)
        return super().classify(x, method, samples=samples, generator=generator)
