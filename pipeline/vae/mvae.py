"""M2 (Kingma et al., 2014) and SS-MVAE (its multimodal extension; Section 4).

Generative model:  p(y) = Cat(1/K),  p(z) = N(0, I),  p(x_m | z, y) for each modality m.
Inference model:   q(y | x_1..x_M),  q(z | x_1..x_M, y).
Labelled bound:    L = E_q(z|x,y)[ sum_m log p(x_m|z,y) ] + log p(y) - KL(q(z|x,y) || p(z)).

With one modality this is M2; with two it is SS-MVAE, which sees every modality at once and
so, at test time, can only be given a missing modality as zeros ("zero-fill").
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pipeline.vae.layers import CategoricalHead, GaussianHead, LikelihoodHead, Trunk
from pipeline.vae.objective import (
    ObjectiveConfig,
    SemiSupervisedVAE,
    Tensors,
    kl_to_standard_normal,
    log_uniform_prior,
)


class MVAE(SemiSupervisedVAE):
    def __init__(self, *, dims: Mapping[str, int], n_classes: int, objective: ObjectiveConfig,
                 hidden: int, z_dim: int, dropout: float, likelihood: str) -> None:
        super().__init__(objective)
        self.modalities = list(dims)
        self.n_classes = n_classes
        self.q_y_x = Trunk(dims, hidden)
        self.q_y_x_head = CategoricalHead(self.q_y_x.out_features, n_classes, dropout)
        self.q_z_xy = Trunk({**dims, "y": n_classes}, hidden)
        self.q_z_xy_head = GaussianHead(self.q_z_xy.out_features, z_dim)
        self.p_x_zy = torch.nn.ModuleDict(
            {m: Trunk({"z": z_dim, "y": n_classes}, hidden, depth=1) for m in dims})
        self.p_x_zy_head = torch.nn.ModuleDict(
            {m: LikelihoodHead(hidden, dim, likelihood) for m, dim in dims.items()})

    def encode(self, x: Tensors) -> Tensors:
        return {"logits": self.q_y_x_head(self.q_y_x(**x))}

    def elbo_terms(self, x: Tensors, y: torch.Tensor, ctx: Tensors) -> Tensors:
        q_z = self.q_z_xy_head(self.q_z_xy(**x, y=y))
        z = q_z.rsample()
        terms = {}
        for m in self.modalities:
            p_x = self.p_x_zy_head[m](self.p_x_zy[m](z=z, y=y))
            terms[f"log_p_{m}"] = p_x.log_prob(x[m])
        terms["-kl_z"] = -kl_to_standard_normal(q_z)
        terms["log_p_y"] = log_uniform_prior(y)
        return terms

    def classify(self, x: Tensors, method: str = "joint", *, samples: int = 0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        # q(y|x) has no latent in front of it: nothing to average over
        if method != "joint":
            raise ValueError(f"{type(self).__name__} classifies from all its inputs only; "
                             f"got method {method!r}")
        return torch.log_softmax(self.encode(x)["logits"], -1)
