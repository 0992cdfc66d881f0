"""SDGM, the skip deep generative model (Maaløe et al., 2016); unimodal.

Generative model:  p(y) = Cat(1/K),  p(z) = N(0, I),  p(a | z, y),  p(x | a, z, y).
Inference model:   q(a | x),  q(y | a, x),  q(z | a, y, x).
Labelled bound:    L = E_q[ log p(x|a,z,y) + log p(a|z,y) - log q(a|x) ] + log p(y)
                       - KL(q(z|a,y,x) || p(z)).

The auxiliary a is sampled before y, so the classifier q(y|a,x) sees it; at test time
q(y|x) = E_q(a|x)[q(y|a,x)], averaged over `samples` draws of a, or q(y | E[a], x) with
samples = 0 (Maaløe et al. average 100 draws).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pipeline.vae.layers import CategoricalHead, GaussianHead, LikelihoodHead, Trunk
from pipeline.vae.objective import (
    ObjectiveConfig,
    SemiSupervisedVAE,
    Tensors,
    class_log_probs,
    kl_to_standard_normal,
    log_uniform_prior,
)


class SDGM(SemiSupervisedVAE):
    latent_classifier = True
    def __init__(self, *, dims: Mapping[str, int], n_classes: int, objective: ObjectiveConfig,
                 hidden: int, a_dim: int, z_dim: int, dropout: float,
                 likelihood: str) -> None:
        super().__init__(objective)
        if len(dims) != 1:
            raise ValueError(f"SDGM is unimodal: expected one modality, got {list(dims)}")
        self.modalities = list(dims)
        (self.m, dim), = dims.items()
        self.n_classes = n_classes
        k = n_classes
        self.q_a_x = Trunk({"x": dim}, hidden)
        self.q_a_x_head = GaussianHead(self.q_a_x.out_features, a_dim)
        self.q_y_ax = Trunk({"a": a_dim, "x": dim}, hidden)
        self.q_y_ax_head = CategoricalHead(self.q_y_ax.out_features, k, dropout)
        self.q_z_axy = Trunk({"a": a_dim, "y": k, "x": dim}, hidden)
        self.q_z_axy_head = GaussianHead(self.q_z_axy.out_features, z_dim)
        self.p_a_zy = Trunk({"z": z_dim, "y": k}, hidden)
        self.p_a_zy_head = GaussianHead(self.p_a_zy.out_features, a_dim)
        self.p_x_azy = Trunk({"a": a_dim, "z": z_dim, "y": k}, hidden, depth=1)
        self.p_x_azy_head = LikelihoodHead(self.p_x_azy.out_features, dim, likelihood)

    def encode(self, x: Tensors) -> Tensors:
        q_a = self.q_a_x_head(self.q_a_x(x=x[self.m]))
        a = q_a.rsample()
        logits = self.q_y_ax_head(self.q_y_ax(a=a, x=x[self.m]))
        return {"a": a, "log_q_a": q_a.log_prob(a), "logits": logits}

    def elbo_terms(self, x: Tensors, y: torch.Tensor, ctx: Tensors) -> Tensors:
        a, xm = ctx["a"], x[self.m]
        q_z = self.q_z_axy_head(self.q_z_axy(a=a, y=y, x=xm))
        z = q_z.rsample()
        p_a = self.p_a_zy_head(self.p_a_zy(z=z, y=y))
        p_x = self.p_x_azy_head(self.p_x_azy(a=a, z=z, y=y))
        return {
            f"log_p_{self.m}": p_x.log_prob(xm),
            "log_p_a-log_q_a": p_a.log_prob(a) - ctx["log_q_a"],
            "-kl_z": -kl_to_standard_normal(q_z),
            "log_p_y": log_uniform_prior(y),
        }

    def classify(self, x: Tensors, method: str = "joint", *, samples: int = 0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        if method != "joint":
            raise ValueError(f"SDGM classifies from its one input; got method {method!r}")
        xm = x[self.m]
        return class_log_probs(self.q_a_x_head(self.q_a_x(x=xm)),
                               lambda a: self.q_y_ax_head(self.q_y_ax(a=a, x=xm)),
                               samples=samples, generator=generator)
