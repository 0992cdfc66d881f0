"""The papers' bounds written out by hand from the networks' outputs, for the tests.

Each function calls a model's sub-networks (an MLP trunk and its output head) for the
parameters of a distribution and writes every log-density, KL and expectation itself; none
calls a model's `encode`, `elbo_terms`, `labelled_bound`, `unlabelled_bound` or `loss`. The
random draws are taken in the order the model takes them (a, then z, per batch; the
Gumbel-softmax uniforms before the unlabelled z), so with the same seed the values agree.

- SS-HMVAE (Suzuki & Matsuo, eq. (1)-(4)):
  L(x,w,y) = log p(x|a) + log p(w|a) + log p(a|z,y) - log q(a|x,w) - KL(q(z|a,y)||p(z))
  + log p(y), with a ~ q(a|x,w), z ~ q(z|a,y); the classifier q(y|a).
- SDGM (Maaløe et al., 2016): L(x,y) = log p(x|a,z,y) + log p(a|z,y) - log q(a|x)
  - KL(q(z|a,y,x)||p(z)) + log p(y), with a ~ q(a|x), z ~ q(z|a,y,x); the classifier q(y|a,x).
- SS-MVAE / M2 (Kingma et al., 2014): L(x,w,y) = sum_m log p(x_m|z,y) - KL(q(z|x,w,y)||p(z))
  + log p(y), with z ~ q(z|x,w,y); the classifier q(y|x,w).

U(x) = L(x, y~) - log q(y~|.) with y~ one Gumbel-softmax draw from the classifier (eq. (2)),
and J = mean_l [L + alpha log q(y|.)] + mean_u [U] (eq. (3)).
"""

from __future__ import annotations

import math

import torch

from pipeline.vae.hmvae import SSHMVAE
from pipeline.vae.mvae import MVAE
from pipeline.vae.sdgm import SDGM


def log_normal(x, mu, sigma):
    """log N(x; mu, sigma^2), summed over the last axis."""
    return (-0.5 * ((x - mu) / sigma) ** 2 - torch.log(sigma)
            - 0.5 * math.log(2 * math.pi)).sum(-1)


def kl_to_standard_normal(mu, sigma):
    """KL(N(mu, sigma^2) || N(0, I)), summed over the last axis."""
    return 0.5 * (sigma ** 2 + mu ** 2 - 1 - 2 * torch.log(sigma)).sum(-1)


def kl_normal(mu1, sigma1, mu2, sigma2):
    """KL(N(mu1, sigma1^2) || N(mu2, sigma2^2)), summed over the last axis."""
    return (torch.log(sigma2 / sigma1)
            + (sigma1 ** 2 + (mu1 - mu2) ** 2) / (2 * sigma2 ** 2) - 0.5).sum(-1)


def gaussian(head, h):
    """(mu, sigma) of a Gaussian head at hidden h (Appendix B: f_mu, Softplus(f_sigma2))."""
    dist = head(h)
    return dist.base_dist.loc, dist.base_dist.scale


def draw(mu, sigma):
    """a = mu + sigma * eps, eps ~ N(0, I) from torch's global generator."""
    return mu + sigma * torch.randn_like(mu)


def gumbel_softmax(logits, temperature):
    """One relaxed one-hot draw: softmax((log q + g) / T), g = -log(-log u), u ~ U(0, 1)."""
    log_q = torch.log_softmax(logits, -1)
    eps = torch.finfo(log_q.dtype).eps
    u = torch.rand(log_q.shape).clamp(eps, 1 - eps)
    return torch.softmax((log_q - torch.log(-torch.log(u))) / temperature, -1)


def log_likelihood(likelihood_head, h, x):
    """log p(x|h) of a `LikelihoodHead`, from its linear layers alone."""
    head = likelihood_head.head
    mu = head.f_mu(h)
    if likelihood_head.kind == "bernoulli":
        p = torch.sigmoid(mu)
        return (x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(-1)
    if likelihood_head.kind == "gaussian_fixed":
        return log_normal(x, mu, torch.ones_like(mu))
    return log_normal(x, *gaussian(head, h))


def log_prior_y(y):
    """log p(y) for p(y) = Cat(1/K), y one-hot or relaxed."""
    return -math.log(y.shape[-1]) * y.sum(-1)


def score(y, logits):
    """log q(y|.) of a one-hot y; the usual score of a relaxed one."""
    return (y * torch.log_softmax(logits, -1)).sum(-1)


def one_hot(labels, k):
    return torch.nn.functional.one_hot(labels, k).float()


# -- SS-HMVAE ----------------------------------------------------------------------------

def hmvae_terms(model, x, y, a, log_q_a):
    """eq. (1)'s terms at (x, w, y) for a given a ~ q(a|x,w), by the model's names."""
    terms = {f"log_p_{m}": log_likelihood(model.p_x_a_head[m], model.p_x_a[m](a=a), x[m])
             for m in model.modalities}
    mu_z, sigma_z = gaussian(model.q_z_ay_head, model.q_z_ay(a=a, y=y))
    z = draw(mu_z, sigma_z)
    mu_a, sigma_a = gaussian(model.p_a_zy_head, model.p_a_zy(z=z, y=y))
    terms["log_p_a-log_q_a"] = log_normal(a, mu_a, sigma_a) - log_q_a
    terms["-kl_z"] = -kl_to_standard_normal(mu_z, sigma_z)
    terms["log_p_y"] = log_prior_y(y)
    return terms


def hmvae_kl(model, x, joint):
    """eq. (4)'s divergence per example: sum_m KL(q(a|x,w) || q(a|x_m)); joint = (mu, sigma)."""
    return sum(kl_normal(*joint, *gaussian(model.q_a_m_head[m], model.q_a_m[m](x=x[m])))
               for m in model.modalities)


# -- SDGM --------------------------------------------------------------------------------

def sdgm_bound(model, x, y, a, log_q_a):
    """SDGM's L(x, y) for a given a ~ q(a|x)."""
    xm = x[model.m]
    mu_z, sigma_z = gaussian(model.q_z_axy_head, model.q_z_axy(a=a, y=y, x=xm))
    z = draw(mu_z, sigma_z)
    mu_a, sigma_a = gaussian(model.p_a_zy_head, model.p_a_zy(z=z, y=y))
    log_p_x = log_likelihood(model.p_x_azy_head, model.p_x_azy(a=a, z=z, y=y), xm)
    return (log_p_x + log_normal(a, mu_a, sigma_a) - log_q_a
            - kl_to_standard_normal(mu_z, sigma_z) + log_prior_y(y))


# -- SS-MVAE / M2 ------------------------------------------------------------------------

def mvae_bound(model, x, y):
    """SS-MVAE's (M2's, with one modality) L(x, w, y)."""
    mu_z, sigma_z = gaussian(model.q_z_xy_head, model.q_z_xy(**x, y=y))
    z = draw(mu_z, sigma_z)
    log_p_x = sum(log_likelihood(model.p_x_zy_head[m], model.p_x_zy[m](z=z, y=y), x[m])
                  for m in model.modalities)
    return log_p_x - kl_to_standard_normal(mu_z, sigma_z) + log_prior_y(y)


# -- any of them -------------------------------------------------------------------------

def encode(model, x):
    """What the inference model draws before y is known: the classifier's logits and,
    where a latent a comes first, a, log q(a|.) and q(a|.)'s (mu, sigma) as "joint"."""
    if isinstance(model, SSHMVAE):
        mu, sigma = gaussian(model.q_a_xw_head, model.q_a_xw(**x))
        a = draw(mu, sigma)
        return {"a": a, "log_q_a": log_normal(a, mu, sigma), "joint": (mu, sigma),
                "logits": model.q_y_a_head(model.q_y_a(a=a))}
    if isinstance(model, SDGM):
        xm = x[model.m]
        mu, sigma = gaussian(model.q_a_x_head, model.q_a_x(x=xm))
        a = draw(mu, sigma)
        return {"a": a, "log_q_a": log_normal(a, mu, sigma),
                "logits": model.q_y_ax_head(model.q_y_ax(a=a, x=xm))}
    if isinstance(model, MVAE):
        return {"logits": model.q_y_x_head(model.q_y_x(**x))}
    raise TypeError(f"no bound by hand for {type(model).__name__}")


def bound(model, x, y, enc):
    """L(x, y) per example, with the draws of `encode` (`enc`)."""
    if isinstance(model, SSHMVAE):
        return sum(hmvae_terms(model, x, y, enc["a"], enc["log_q_a"]).values())
    if isinstance(model, SDGM):
        return sdgm_bound(model, x, y, enc["a"], enc["log_q_a"])
    return mvae_bound(model, x, y)


def unlabelled_terms(model, x, enc, temperature):
    """(L(x, y~), -log q(y~|.)) per example, y~ one Gumbel-softmax draw (eq. (2))."""
    y = gumbel_softmax(enc["logits"], temperature)
    return bound(model, x, y, enc), -score(y, enc["logits"])


def objective(model, labelled, unlabelled, temperature):
    """eq. (3)'s batch means: (labelled bound, log q(y|.), unlabelled bound), and the two
    batches' `encode` results (for eq. (4)), drawing in the model's order."""
    y = one_hot(labelled.y, model.n_classes)
    enc_l = encode(model, labelled.x)
    bound_l = bound(model, labelled.x, y, enc_l).mean()
    log_q_y = score(y, enc_l["logits"]).mean()
    enc_u = encode(model, unlabelled.x)
    bound_u = sum(unlabelled_terms(model, unlabelled.x, enc_u, temperature)).mean()
    return bound_l, log_q_y, bound_u, (enc_l, enc_u)
