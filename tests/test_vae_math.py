"""The bounds are the paper's: each term against its definition, written out by hand."""

import math

import pytest
import torch
from torch.distributions import Independent, Normal

from pipeline.config import TrainConfig
from pipeline.vae import MODELS, build_model
from pipeline.vae.hmvae import SSHMVAE, SSHMVAEKL
from pipeline.vae.layers import DkBR, GaussianHead
from pipeline.vae.mvae import MVAE
from pipeline.vae.objective import (
    Batch,
    ObjectiveConfig,
    kl_to_standard_normal,
    log_q_of,
    log_uniform_prior,
    one_hot,
)
from pipeline.vae.sdgm import SDGM
from tests import by_hand
from tests.by_hand import log_normal

DIMS = {"rgb": 6, "depth": 5}
K = 3
SIZES = {"hidden": 8, "a_dim": 4, "z_dim": 3, "dropout": 0.0, "likelihood": "gaussian"}


def batches(seed: int = 0, n: int = 5):
    g = torch.Generator().manual_seed(seed)
    x_l = {m: torch.randn(n, d, generator=g) for m, d in DIMS.items()}
    x_u = {m: torch.randn(n + 2, d, generator=g) for m, d in DIMS.items()}
    y = torch.arange(n) % K
    return Batch(x_l, y), Batch(x_u)


def hmvae(cls=SSHMVAE, **objective) -> SSHMVAE:
    torch.manual_seed(0)
    return cls(dims=DIMS, n_classes=K, objective=ObjectiveConfig(**objective), **SIZES)


def test_gaussian_head_is_softplus_variance():
    torch.manual_seed(0)
    head = GaussianHead(4, 3, min_variance=0.0)
    h = torch.randn(2, 4)
    dist = head(h)
    variance = torch.nn.functional.softplus(head.f_sigma2(h))
    torch.testing.assert_close(dist.base_dist.scale ** 2, variance)
    torch.testing.assert_close(dist.base_dist.loc, head.f_mu(h))
    assert dist.event_shape == (3,)


def test_dkbr_is_linear_batchnorm_relu():
    layer = DkBR(5, 7)
    assert [type(m).__name__ for m in layer] == ["Linear", "BatchNorm1d", "ReLU"]


def test_analytic_kl_matches_monte_carlo():
    torch.manual_seed(0)
    q = Independent(Normal(torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[0.3, 1.5, 0.8]])), 1)
    prior = Independent(Normal(torch.zeros(1, 3), torch.ones(1, 3)), 1)
    samples = q.sample((400_000,))
    monte_carlo = (q.log_prob(samples) - prior.log_prob(samples)).mean(0)
    analytic = kl_to_standard_normal(q)
    by_hand = 0.5 * (q.base_dist.scale ** 2 + q.base_dist.loc ** 2 - 1
                     - torch.log(q.base_dist.scale ** 2)).sum(-1)
    torch.testing.assert_close(analytic, by_hand)
    torch.testing.assert_close(analytic, monte_carlo, atol=0.01, rtol=0.0)


def test_prior_and_classifier_scores():
    y = one_hot(torch.tensor([0, 2]), K)
    torch.testing.assert_close(log_uniform_prior(y), torch.full((2,), -math.log(K)))
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    expected = torch.log_softmax(logits, -1)[torch.arange(2), torch.tensor([0, 2])]
    torch.testing.assert_close(log_q_of(y, logits), expected)


def test_hmvae_labelled_terms_are_equation_1():
    model = hmvae().eval()
    labelled, _ = batches()
    y = one_hot(labelled.y, K)
    torch.manual_seed(1)
    ctx = model.encode(labelled.x)
    terms = model.elbo_terms(labelled.x, y, ctx)

    # The same computation written from the paper, with the same noise.
    torch.manual_seed(1)
    q_a = model.q_a_xw_head(model.q_a_xw(**labelled.x))
    eps_a = torch.randn_like(q_a.base_dist.loc)
    a = q_a.base_dist.loc + q_a.base_dist.scale * eps_a
    torch.testing.assert_close(a, ctx["a"])
    log_q_a = log_normal(a, q_a.base_dist.loc, q_a.base_dist.scale)
    q_z = model.q_z_ay_head(model.q_z_ay(a=a, y=y))
    z = q_z.base_dist.loc + q_z.base_dist.scale * torch.randn_like(q_z.base_dist.loc)
    p_a = model.p_a_zy_head(model.p_a_zy(z=z, y=y))
    mu_z, var_z = q_z.base_dist.loc, q_z.base_dist.scale ** 2
    expected = {
        "log_p_a-log_q_a": log_normal(a, p_a.base_dist.loc, p_a.base_dist.scale) - log_q_a,
        "-kl_z": -0.5 * (var_z + mu_z ** 2 - 1 - torch.log(var_z)).sum(-1),
        "log_p_y": torch.full((5,), -math.log(K)),
    }
    for m in DIMS:
        p_x = model.p_x(m, a)
        expected[f"log_p_{m}"] = log_normal(labelled.x[m], p_x.base_dist.loc, p_x.base_dist.scale)
    assert set(terms) == set(expected)
    for name in expected:
        torch.testing.assert_close(terms[name], expected[name], msg=name)


def test_m2_labelled_terms_by_hand():
    torch.manual_seed(0)
    model = MVAE(dims={"rgb": 6}, n_classes=K, objective=ObjectiveConfig(), hidden=8, z_dim=3,
                 dropout=0.0, likelihood="bernoulli").eval()
    x = {"rgb": torch.rand(4, 6)}
    y = one_hot(torch.tensor([0, 1, 2, 1]), K)
    torch.manual_seed(2)
    terms = model.elbo_terms(x, y, model.encode(x))
    torch.manual_seed(2)
    q_z = model.q_z_xy_head(model.q_z_xy(rgb=x["rgb"], y=y))
    z = q_z.base_dist.loc + q_z.base_dist.scale * torch.randn_like(q_z.base_dist.loc)
    mu = torch.sigmoid(model.p_x_zy_head["rgb"].head.f_mu(model.p_x_zy["rgb"](z=z, y=y)))
    bernoulli = (x["rgb"] * torch.log(mu) + (1 - x["rgb"]) * torch.log(1 - mu)).sum(-1)
    torch.testing.assert_close(terms["log_p_rgb"], bernoulli, atol=1e-5, rtol=1e-5)
    mu_z, var_z = q_z.base_dist.loc, q_z.base_dist.scale ** 2
    kl_by_hand = 0.5 * (var_z + mu_z ** 2 - 1 - torch.log(var_z)).sum(-1)
    torch.testing.assert_close(terms["-kl_z"], -kl_by_hand)
    torch.testing.assert_close(terms["log_p_y"], torch.full((4,), -math.log(K)))
    assert set(terms) == {"log_p_rgb", "-kl_z", "log_p_y"}


@pytest.mark.parametrize("cls", [SSHMVAE, SSHMVAEKL])
def test_loss_is_equation_3(cls):
    """-J of eq. (3), and for -kl eq. (4)'s KL term, every term from the networks' outputs."""
    share = 0.05  # N / (N + M)
    model = hmvae(cls, alpha=0.7, beta=2.5, temperature=0.3, labelled_share=share)
    labelled, unlabelled = batches()
    torch.manual_seed(3)
    loss, logged = model.loss(labelled, unlabelled)
    torch.manual_seed(3)
    bound_l, log_q_y, bound_u, (enc_l, enc_u) = by_hand.objective(model, labelled,
                                                                   unlabelled, 0.3)
    expected = bound_l + 0.7 * log_q_y + bound_u
    if cls is SSHMVAEKL:
        kl = (share * by_hand.hmvae_kl(model, labelled.x, enc_l["joint"]).mean()
              + (1 - share) * by_hand.hmvae_kl(model, unlabelled.x, enc_u["joint"]).mean())
        expected = expected - 2.5 * kl
    torch.testing.assert_close(loss, -expected)
    torch.testing.assert_close(logged["labelled/bound"], bound_l.detach())
    torch.testing.assert_close(logged["unlabelled/bound"], bound_u.detach())
    torch.testing.assert_close(logged["classifier/log_q_y"], log_q_y.detach())


def test_alpha_zero_removes_classifier_term():
    labelled, unlabelled = batches()
    losses = {}
    for alpha in (0.0, 1.0):
        model = hmvae(alpha=alpha)
        torch.manual_seed(4)
        losses[alpha], logged = model.loss(labelled, unlabelled)
    torch.testing.assert_close(losses[1.0] - losses[0.0], -logged["classifier/log_q_y"])
    # ... and its gradient: the labels reach q(y|a) only through alpha's term, so with
    # alpha = 0 the classifier's gradient from the whole loss does not depend on them.
    relabelled = Batch(labelled.x, (labelled.y + 1) % K)
    for alpha in (0.0, 1.0):
        model = hmvae(alpha=alpha)
        classifier = [*model.q_y_a.parameters(), *model.q_y_a_head.parameters()]
        grads = []
        for batch in (labelled, relabelled):
            torch.manual_seed(4)
            loss, _ = model.loss(batch, unlabelled)
            grads.append(torch.autograd.grad(loss, classifier))
        same = all(torch.allclose(g, h, rtol=1e-5, atol=1e-7)
                   for g, h in zip(*grads, strict=True))
        assert same == (alpha == 0.0), alpha


def test_gumbel_samples_lie_on_the_simplex(monkeypatch):
    model = hmvae(temperature=0.5)
    _, unlabelled = batches()
    seen = []
    original = model.elbo_terms

    def spy(x, y, ctx):
        seen.append(y.detach())
        return original(x, y, ctx)

    monkeypatch.setattr(model, "elbo_terms", spy)
    model.unlabelled_bound(unlabelled)
    (y,) = seen
    assert y.shape == (len(unlabelled), K)
    assert (y >= 0).all()
    torch.testing.assert_close(y.sum(-1), torch.ones(len(unlabelled)))
    assert not torch.all((y == 0) | (y == 1))  # relaxed, not one-hot


def test_enumeration_is_expectation_plus_entropy(monkeypatch):
    model = hmvae(unlabeled_y="enumerate")
    _, unlabelled = batches()
    value = torch.tensor([1.0, -2.0, 5.0])
    monkeypatch.setattr(model, "elbo_terms", lambda x, y, ctx: {"f": y @ value})
    torch.manual_seed(5)
    terms, ctx = model.unlabelled_bound(unlabelled)
    q = torch.softmax(ctx["logits"], -1)
    torch.testing.assert_close(terms["f"], q @ value)
    torch.testing.assert_close(terms["entropy"], -(q * torch.log(q)).sum(-1))


def test_kl_term_is_equation_4():
    """beta / (M + N) * sum over D_L u D_U: each batch mean weighted by its set's share."""
    share = 0.05  # N / (N + M): 5 % labelled, as in the paper
    model = hmvae(SSHMVAEKL, beta=2.5, labelled_share=share)
    labelled, unlabelled = batches()
    torch.manual_seed(6)
    _, logged = model.loss(labelled, unlabelled)
    torch.manual_seed(6)
    _, l_ctx = model.labelled_bound(labelled)
    _, u_ctx = model.unlabelled_bound(unlabelled)
    kls = []
    for batch, ctx in ((labelled, l_ctx), (unlabelled, u_ctx)):
        mu, sigma = ctx["q_a_loc"], ctx["q_a_scale"]
        for m in DIMS:
            uni = model.q_a_unimodal(m, batch.x[m])
            mu2, sigma2 = uni.base_dist.loc, uni.base_dist.scale
            kls.append((torch.log(sigma2 / sigma)
                        + (sigma ** 2 + (mu - mu2) ** 2) / (2 * sigma2 ** 2) - 0.5).sum(-1))
    # every training example weighs the same: the labelled batch stands for N examples,
    # the unlabelled one for M (a concatenated batch would give the labelled half weight)
    paper = share * (kls[0] + kls[1]).mean() + (1 - share) * (kls[2] + kls[3]).mean()
    torch.testing.assert_close(logged["-beta*kl_a"], -2.5 * paper.detach())


def test_unimodal_encoders_learn_only_through_the_kl_term():
    labelled, unlabelled = batches()
    model = hmvae(SSHMVAEKL, beta=0.0)
    loss, _ = model.loss(labelled, unlabelled)
    unimodal = list(model.q_a_m.parameters()) + list(model.q_a_m_head.parameters())
    grads = torch.autograd.grad(loss, unimodal, allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)

    model = hmvae(SSHMVAEKL, beta=1.0)
    torch.manual_seed(7)
    loss, _ = model.loss(labelled, unlabelled)
    torch.manual_seed(7)
    _, l_ctx = model.labelled_bound(labelled)
    _, u_ctx = model.unlabelled_bound(unlabelled)
    kl_only = -model.extra_objective(labelled, unlabelled, l_ctx, u_ctx)["-beta*kl_a"]
    unimodal = list(model.q_a_m.parameters()) + list(model.q_a_m_head.parameters())
    full = torch.autograd.grad(loss, unimodal)
    from_kl = torch.autograd.grad(kl_only, unimodal, retain_graph=True)
    assert any(torch.count_nonzero(g) > 0 for g in full)
    for g_full, g_kl in zip(full, from_kl, strict=True):
        torch.testing.assert_close(g_full, g_kl)
    # ... and the KL also pulls the joint encoder (JMVAE-kl style).
    joint = torch.autograd.grad(kl_only, list(model.q_a_xw_head.parameters()))
    assert any(torch.count_nonzero(g) > 0 for g in joint)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_network_gets_gradient(name):
    cfg = TrainConfig(hidden=8, a_dim=4, z_dim=3, dropout=0.0)
    torch.manual_seed(0)
    model = build_model(name, DIMS, K, cfg)
    labelled, unlabelled = batches()
    loss, _ = model.loss(labelled, unlabelled)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        # BatchNorm makes a layer's bias before it irrelevant; everything else must move.
        if not pname.endswith("0.bias"):
            assert torch.count_nonzero(p.grad) > 0, pname


@pytest.mark.parametrize("name", list(MODELS))
def test_classify_shapes_in_eval(name):
    cfg = TrainConfig(hidden=8, a_dim=4, z_dim=3)
    model = build_model(name, DIMS, K, cfg).eval()
    labelled, _ = batches()
    for evaluation in MODELS[name].evaluations(list(DIMS)):
        x = {m: labelled.x[m] for m in (DIMS if evaluation.method in ("zero_fill", "iterative")
                                         else evaluation.inputs)}
        method = "joint" if evaluation.method in ("zero_fill", "iterative") else evaluation.method
        logits = model.classify(x, method)
        assert logits.shape == (5, K) and logits.dtype == torch.float32


def test_paper_sizes_are_the_defaults():
    model = build_model("ss_hmvae_kl", {"rgb": 4096, "depth": 4096}, 51, TrainConfig())
    assert model.q_a_xw.branches["rgb"][0].in_features == 4096
    assert model.q_a_xw.branches["rgb"][0].out_features == 1024
    assert model.q_a_xw_head.f_mu.out_features == 1024
    assert model.q_y_a_head.net[0].p == 0.5 and model.q_y_a_head.net[1].out_features == 51
    assert model.p_x_a_head["depth"].head.f_mu.out_features == 4096
    assert len(model.p_x_a["rgb"].tail) == 1  # a-D1024BR-D1024BR


@pytest.mark.parametrize("fill", ["mean", "sample"])
def test_iterative_sampling_fills_the_missing_modality(fill):
    """The fill is what p(x|a) says: with a mean-only decoder whose f_mu is c for every a,
    the mean fill is c and a sampled fill is N(c, I), far from the N(0, I) start noise."""
    torch.manual_seed(0)
    model = SSHMVAE(dims=DIMS, n_classes=K, objective=ObjectiveConfig(),
                    **{**SIZES, "likelihood": "gaussian_fixed"}).eval()
    c = torch.linspace(2.0, 7.0, DIMS["rgb"])
    f_mu = model.p_x_a_head["rgb"].head.f_mu
    with torch.no_grad():
        f_mu.weight.zero_()
        f_mu.bias.copy_(c)
    n = 2000
    g = torch.Generator().manual_seed(0)
    depth = torch.randn(n, DIMS["depth"], generator=g)
    filled = model.impute({"depth": depth}, "rgb", steps=3, generator=g, fill=fill)
    assert filled.shape == (n, DIMS["rgb"])
    if fill == "mean":
        torch.testing.assert_close(filled, c.expand(n, -1))
    else:
        # common random numbers: one call's rows share their draw (c + the same noise) ...
        torch.testing.assert_close(filled, filled[:1].expand(n, -1))
        # ... and over 2000 seeds the draws are N(c, I): the mean within 0.1 (4.5 standard
        # errors), the spread near 1
        draws = torch.cat([model.impute({"depth": depth[:1]}, "rgb", steps=3, fill=fill,
                                        generator=torch.Generator().manual_seed(s))
                           for s in range(n)])
        noise = draws - c
        assert noise.mean(0).abs().max() < 0.1
        assert (noise.std(0) - 1).abs().max() < 0.1


def sdgm(**objective) -> SDGM:
    torch.manual_seed(0)
    return SDGM(dims={"rgb": DIMS["rgb"]}, n_classes=K, objective=ObjectiveConfig(**objective),
                **{**SIZES, "likelihood": "gaussian_fixed"})


def ss_mvae(**objective) -> MVAE:
    torch.manual_seed(0)
    return MVAE(dims=DIMS, n_classes=K, objective=ObjectiveConfig(**objective),
                likelihood="bernoulli", hidden=8, z_dim=3, dropout=0.0)


def bounds_by_hand(name: str):
    """The model's loss and logged terms, and (labelled bound, log q(y|.), unlabelled bound)
    by hand with the same draws; the loss checked against eq. (3) with them."""
    if name == "sdgm":
        model = sdgm(alpha=0.7, temperature=0.3)
        labelled, unlabelled = batches()
        labelled = Batch({"rgb": labelled.x["rgb"]}, labelled.y)
        unlabelled = Batch({"rgb": unlabelled.x["rgb"]})
    else:  # Bernoulli features in [0, 1]
        model = ss_mvae(alpha=0.7, temperature=0.3)
        labelled, unlabelled = batches()
        labelled = Batch({m: torch.sigmoid(t) for m, t in labelled.x.items()}, labelled.y)
        unlabelled = Batch({m: torch.sigmoid(t) for m, t in unlabelled.x.items()})
    torch.manual_seed(8)
    loss, logged = model.loss(labelled, unlabelled)
    torch.manual_seed(8)
    bound_l, log_q_y, bound_u, _ = by_hand.objective(model, labelled, unlabelled, 0.3)
    return loss, logged, (bound_l, log_q_y, bound_u)


@pytest.mark.parametrize("name", ["sdgm", "ss_mvae"])
def test_labelled_bound_by_hand(name):
    """SDGM: log p(x|a,z,y) + log p(a|z,y) - log q(a|x) - KL(q(z|a,y,x)||p(z)) + log p(y);
    SS-MVAE: log p(x|z,y) + log p(w|z,y) - KL(q(z|x,w,y)||p(z)) + log p(y)."""
    loss, logged, (bound_l, log_q_y, bound_u) = bounds_by_hand(name)
    torch.testing.assert_close(logged["labelled/bound"], bound_l.detach())
    torch.testing.assert_close(logged["classifier/log_q_y"], log_q_y.detach())
    torch.testing.assert_close(loss, -(bound_l + 0.7 * log_q_y + bound_u))


@pytest.mark.parametrize("name", ["sdgm", "ss_mvae"])
def test_unlabelled_bound_by_hand(name):
    """U(x) = L(x, y~) - log q(y~|.), y~ a Gumbel-softmax draw from the model's classifier."""
    loss, logged, (bound_l, log_q_y, bound_u) = bounds_by_hand(name)
    torch.testing.assert_close(logged["unlabelled/bound"], bound_u.detach())
    torch.testing.assert_close(loss, -(bound_l + 0.7 * log_q_y + bound_u))
