"""The paper's definitions, checked where a plausible implementation would drift from them.

Feature scaling that never amplifies a held-out value, the mean-only decoder and fp32
output heads, eq. (2)'s unlabelled terms and eq. (4)'s weights by hand, q(y|x) as an
expectation over the latent, Appendix D's chain by hand, and the prediction paths
(zero-fill, iterative) through `evaluate.predict`. Each test failed on the code before it.
"""

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.config import TrainConfig
from pipeline.store import FeatureSet, write_features
from pipeline.vae import MODELS, Evaluation, build_model
from pipeline.vae.data import FeatureScaler, prepare
from pipeline.vae.evaluate import Option, predict, variants
from pipeline.vae.experiment import _build, train_and_evaluate
from pipeline.vae.hmvae import SSHMVAE, SSHMVAEKL
from pipeline.vae.layers import GaussianHead, LikelihoodHead, Trunk
from pipeline.vae.objective import Batch, ObjectiveConfig
from tests import by_hand
from tests.by_hand import log_normal
from tests.digits import digits_views

DIMS = {"rgb": 6, "depth": 5}
K = 3
SIZES = {"hidden": 8, "a_dim": 4, "z_dim": 3, "dropout": 0.0}


def hmvae(cls=SSHMVAE, likelihood="gaussian", **objective):
    torch.manual_seed(0)
    return cls(dims=DIMS, n_classes=K, objective=ObjectiveConfig(**objective),
               likelihood=likelihood, **SIZES).eval()


def inputs(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, d, generator=g) for m, d in DIMS.items()}


# -- 1. scaling ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gaussian", "gaussian_fixed", "bernoulli"])
def test_scaling_never_amplifies_a_dimension_that_does_not_vary_in_training(kind):
    rng = np.random.default_rng(0)
    train = np.abs(rng.normal(1.0, 0.5, (200, 20))).astype(np.float32)
    train[:, 0] = 0.0  # a unit dead on every training image
    train[:, 1] = 0.3 + rng.normal(0, 2e-3, 200).astype(np.float32)  # nearly constant
    held_out = np.ones((1, 20), np.float32)
    held_out[0, :2] = 0.5, 0.8  # both fire on a held-out image
    x = np.vstack([train, held_out])
    rows = np.arange(len(x)) < len(train)
    scaler = FeatureScaler.fit({"rgb": x}, rows, kind)
    test = scaler.transform("rgb", held_out)[0]
    spread = train[:, 2:].std(0) if kind != "bernoulli" else train[:, 2:].max(0)
    # no more amplified than in any ordinary dimension (the old floor of 1e-3 gave 500)
    deviation = np.abs(held_out[0] - scaler.offset["rgb"])
    assert abs(test[0]) <= deviation[0] / spread.min()
    assert abs(test[1]) <= deviation[1] / spread.min()
    # a dimension at least as spread as the median one is standardised (max-scaled) as
    # before; one below it is divided by the median spread, the modality's typical scale
    every = train.std(0) if kind != "bernoulli" else train.max(0)
    typical = np.median(every[every > 0])
    np.testing.assert_allclose(scaler.scale["rgb"], np.maximum(every, typical), rtol=1e-5)
    assert (every[2:] >= typical).sum() >= 8


# -- 2. the decoder --------------------------------------------------------------------

def test_fixed_variance_decoder_is_a_unit_gaussian_around_f_mu():
    torch.manual_seed(0)
    head = LikelihoodHead(4, 6, "gaussian_fixed")
    assert not hasattr(head.head, "f_sigma2")  # mean only, as Appendix C writes p(x|a)
    h, x = torch.randn(3, 4), torch.randn(3, 6)
    expected = log_normal(x, head.head.f_mu(h), torch.ones(3, 6))
    torch.testing.assert_close(head(h).log_prob(x), expected)


def test_every_model_builds_each_likelihood():
    for likelihood in ("gaussian", "gaussian_fixed", "bernoulli"):
        cfg = TrainConfig(hidden=8, a_dim=4, z_dim=3, likelihood=likelihood)
        for name in MODELS:
            model = build_model(name, DIMS, K, cfg)
            heads = [m for m in model.modules() if isinstance(m, LikelihoodHead)]
            assert all(h.kind == likelihood for h in heads)
            assert bool(heads) == (name != "mlp"), name


def test_output_heads_run_in_fp32_under_bf16_autocast_and_hidden_layers_in_bf16():
    torch.manual_seed(0)
    trunk = Trunk({"a": 8}, 16)
    heads = [GaussianHead(16, 32), LikelihoodHead(16, 32, "gaussian"),
             LikelihoodHead(16, 32, "gaussian_fixed"), LikelihoodHead(16, 32, "bernoulli")]
    a = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = trunk(a=a)
        outs = [head(h) for head in heads]
    assert h.dtype == torch.bfloat16
    for head, out in zip(heads, outs, strict=True):
        reference = head(h.float())  # the same hidden values, head in plain fp32
        assert out.base_dist.mean.dtype == torch.float32
        torch.testing.assert_close(out.base_dist.mean, reference.base_dist.mean,
                                   rtol=0, atol=0)


# -- 2 (eq. 2). the unlabelled terms by hand --------------------------------------------

def test_gumbel_unlabelled_terms_by_hand():
    """U(x) = L(x, y~) - log q(y~|a), y~ a Gumbel-softmax draw: each term from the networks'
    outputs (`tests/by_hand.py`), none from the model's own bound."""
    model = hmvae(temperature=0.3)
    x = inputs()
    torch.manual_seed(11)
    terms, _ = model.unlabelled_bound(Batch(x))

    torch.manual_seed(11)
    enc = by_hand.encode(model, x)
    y = by_hand.gumbel_softmax(enc["logits"], 0.3)
    expected = by_hand.hmvae_terms(model, x, y, enc["a"], enc["log_q_a"])
    expected["-log_q_y"] = -by_hand.score(y, enc["logits"])
    assert set(terms) == set(expected)
    for name in expected:
        torch.testing.assert_close(terms[name], expected[name], msg=name)


# -- 3. eq. (4)'s weights from the data -------------------------------------------------

def test_training_weights_eq_4_by_the_sets_shares():
    """eq. (4) weighs every training example the same: in the loss, the KL's labelled batch
    mean weighs N / (N + M) of the data's own counts and the unlabelled one M / (N + M)."""
    data = prepare(digits_views(seed=0), "gaussian", torch.device("cpu"))
    n_l, n_u = len(data.labelled), len(data.unlabelled)
    assert n_l < n_u / 10  # far from an even split
    cfg = TrainConfig(hidden=8, a_dim=4, z_dim=3, dropout=0.0, beta=2.0)
    # _build seeds the weights: the two models differ only in beta
    model = _build("ss_hmvae_kl", data, cfg, torch.device("cpu"))
    without = _build("ss_hmvae_kl", data, dataclasses.replace(cfg, beta=0.0),
                     torch.device("cpu"))
    labelled = Batch({m: t[:8] for m, t in data.labelled.x.items()}, data.labelled.y[:8])
    unlabelled = Batch({m: t[:16] for m, t in data.unlabelled.x.items()})
    losses = []
    for m in (model, without):
        torch.manual_seed(0)
        losses.append(m.loss(labelled, unlabelled)[0])
    kls = [by_hand.hmvae_kl(model, batch.x, by_hand.gaussian(model.q_a_xw_head,
                                                              model.q_a_xw(**batch.x))).mean()
           for batch in (labelled, unlabelled)]
    assert abs(kls[0] - kls[1]) > 0.05 * kls[1]  # so that other weights would show
    share = n_l / (n_l + n_u)
    expected = 2.0 * (share * kls[0] + (1 - share) * kls[1])
    torch.testing.assert_close(losses[0] - losses[1], expected, rtol=1e-4, atol=1e-4)


# -- 4. q(y|x) = E_q(a|x)[q(y|a)] -------------------------------------------------------

@pytest.mark.parametrize("method", ["joint", "unimodal"])
def test_monte_carlo_prediction_averages_probabilities_over_draws_of_a(method):
    model = hmvae(SSHMVAEKL)
    x = inputs()
    if method == "unimodal":
        x = {"depth": x["depth"]}
        q_a = model.q_a_unimodal("depth", x["depth"])
    else:
        q_a = model.q_a(x)
    got = model.classify(x, method, samples=7, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    probs = torch.stack([
        torch.softmax(model.q_y_a_head(model.q_y_a(
            a=q_a.base_dist.loc + q_a.base_dist.scale * torch.randn(  # one draw, all rows
                q_a.base_dist.loc.shape[1:], generator=g))), -1)
        for _ in range(7)]).mean(0)
    torch.testing.assert_close(got, probs.log())
    shortcut = model.classify(x, method, samples=0)
    torch.testing.assert_close(
        shortcut, torch.log_softmax(model.q_y_a_head(model.q_y_a(a=q_a.base_dist.loc)), -1))
    assert not torch.allclose(got, shortcut)


def test_sdgm_monte_carlo_prediction_by_hand():
    model = build_model("sdgm", {"rgb": 6}, K, TrainConfig(hidden=8, a_dim=4, z_dim=3)).eval()
    inner = model.models["rgb"]
    x = {"rgb": torch.randn(5, 6)}
    got = model.classify(x, samples=4, generator=torch.Generator().manual_seed(1))
    q_a = inner.q_a_x_head(inner.q_a_x(x=x["rgb"]))
    g = torch.Generator().manual_seed(1)
    probs = sum(torch.softmax(inner.q_y_ax_head(inner.q_y_ax(
        a=q_a.base_dist.loc + q_a.base_dist.scale * torch.randn(q_a.base_dist.loc.shape[1:],
                                                                generator=g),
        x=x["rgb"])), -1) for _ in range(4)) / 4
    torch.testing.assert_close(got, probs.log())


def test_variants_cover_every_option_that_applies():
    cfg = TrainConfig(predict_samples=10)
    kl, mlp = hmvae(SSHMVAEKL), build_model("mlp", DIMS, K, TrainConfig(hidden=8))
    iterative = Evaluation("rgb", ("rgb",), "iterative", False)
    unimodal = Evaluation("rgb", ("rgb",), "unimodal", True)
    assert set(variants(kl, iterative, cfg)) == {
        "mean_fill/posterior_mean", "mean_fill/monte_carlo",
        "sample_fill/posterior_mean", "sample_fill/monte_carlo"}
    assert {n: o.samples(cfg) for n, o in variants(kl, unimodal, cfg).items()} == {
        "posterior_mean": 0, "monte_carlo": 10}
    assert set(variants(mlp, Evaluation("rgb", ("rgb",), "joint", True), cfg)) == {"exact"}


# -- 4 (Appendix D). iterative sampling by hand ------------------------------------------

@pytest.mark.parametrize("fill", ["mean", "sample"])
def test_iterative_sampling_is_the_chain_of_appendix_d(fill):
    model = hmvae()
    depth = inputs()["depth"]
    got = model.impute({"depth": depth}, "rgb", steps=4,
                       generator=torch.Generator().manual_seed(0), fill=fill)
    g = torch.Generator().manual_seed(0)
    # x ~ p(x): noise like the scaled features; every draw is one row shared by the 5 rows
    rgb = torch.randn(DIMS["rgb"], generator=g).expand(5, -1)
    for _ in range(4):
        q_a = model.q_a_xw_head(model.q_a_xw(rgb=rgb, depth=depth))
        a = q_a.base_dist.loc + q_a.base_dist.scale * torch.randn(q_a.base_dist.loc.shape[1:],
                                                                  generator=g)
        p_x = model.p_x_a_head["rgb"](model.p_x_a["rgb"](a=a))
        rgb = p_x.base_dist.loc
        if fill == "sample":
            rgb = rgb + p_x.base_dist.scale * torch.randn(rgb.shape[1:], generator=g)
    # bit for bit: computing the given modality's branch once per chain changes no result
    torch.testing.assert_close(got, rgb, rtol=0, atol=0)
    # the given modality steers the fill
    other = model.impute({"depth": depth + 3.0}, "rgb", steps=4,
                         generator=torch.Generator().manual_seed(0), fill=fill)
    assert not torch.allclose(got, other, atol=1e-3)


# -- 4. prediction paths through evaluate.predict -------------------------------------

def _scaler() -> FeatureScaler:
    rng = np.random.default_rng(0)
    feats = {m: rng.normal(2.0, 3.0, (50, d)).astype(np.float32) for m, d in DIMS.items()}
    return FeatureScaler.fit(feats, np.ones(50, bool), "gaussian")


def test_zero_fill_gives_the_model_scaled_zeros_for_the_missing_modality(monkeypatch):
    model, scaler, x = hmvae(), _scaler(), inputs()
    seen = {}

    def spy(given, method, **kwargs):
        seen.update(given)
        return torch.zeros(5, K)

    monkeypatch.setattr(model, "classify", spy)
    predict(model, x, Evaluation("rgb", ("rgb",), "zero_fill", True), scaler, TrainConfig())
    torch.testing.assert_close(seen["rgb"], x["rgb"])
    expected = torch.from_numpy((0 - scaler.offset["depth"]) / scaler.scale["depth"]).float()
    torch.testing.assert_close(seen["depth"], expected.expand(5, -1))


@pytest.mark.parametrize("fill", ["mean", "sample"])
def test_iterative_prediction_classifies_the_filled_input(fill):
    model, scaler, x = hmvae(), _scaler(), inputs()
    cfg = TrainConfig(predict_samples=3, iterative_fill=fill, iterative_steps=2, seed=5,
                      precision="fp32")  # the reference below runs in fp32
    got = predict(model, x, Evaluation("depth", ("depth",), "iterative", False), scaler, cfg)
    g = torch.Generator().manual_seed(5)
    rgb = model.impute({"depth": x["depth"]}, "rgb", 2, g, fill=fill)
    expected = model.classify({"rgb": rgb, "depth": x["depth"]}, "joint", samples=3,
                              generator=g)
    torch.testing.assert_close(got, expected)


def test_the_given_modality_reaches_the_prediction():
    model, scaler, x = hmvae(SSHMVAEKL), _scaler(), inputs()
    for method in ("unimodal", "zero_fill", "iterative"):
        evaluation = Evaluation("rgb", ("rgb",), method, True)
        a = predict(model, x, evaluation, scaler, TrainConfig(iterative_steps=2))
        moved = dict(x, rgb=x["rgb"] + 5.0)
        b = predict(model, moved, evaluation, scaler, TrainConfig(iterative_steps=2))
        assert not torch.allclose(a, b), method


# -- 5. the networks built are Appendix C's ---------------------------------------------

def test_every_network_of_ss_hmvae_kl_has_appendix_c_sizes():
    """Appendix C under the paper's configuration: p(x|a), p(w|a) have f_mu only (mean-only
    Gaussians), and every DkBR is Linear -> BatchNorm -> ReLU, with no other BatchNorm."""
    cfg = TrainConfig(likelihood="gaussian_fixed")
    model = build_model("ss_hmvae_kl", {"rgb": 4096, "depth": 4096}, 51, cfg)
    linears = {name: (m.in_features, m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear)}
    dkbr = {  # the Linear layer of each DkBR
        # q(a|x,w): (x-D1024BR, w-D1024BR)
        "q_a_xw.branches.rgb.0": (4096, 1024), "q_a_xw.branches.depth.0": (4096, 1024),
        # q(y|a): a-D1024BR-Dropout0.5
        "q_y_a.branches.a.0": (1024, 1024),
        # q(z|a,y): (a-D1024BR, y-D1024BR)
        "q_z_ay.branches.a.0": (1024, 1024), "q_z_ay.branches.y.0": (51, 1024),
        # p(a|z,y): (z-D1024BR, y-D1024BR)
        "p_a_zy.branches.z.0": (1024, 1024), "p_a_zy.branches.y.0": (51, 1024),
        # q(a|x), q(a|w): x or w-D1024BR
        "q_a_m.rgb.branches.x.0": (4096, 1024), "q_a_m.depth.branches.x.0": (4096, 1024),
    }
    heads = {  # f_mu (and f_sigma2 where the paper lists it): D1024, D51
        "q_a_xw_head.f_mu": (2048, 1024), "q_a_xw_head.f_sigma2": (2048, 1024),
        "q_y_a_head.net.1": (1024, 51),
        "q_z_ay_head.f_mu": (2048, 1024), "q_z_ay_head.f_sigma2": (2048, 1024),
        "p_a_zy_head.f_mu": (2048, 1024), "p_a_zy_head.f_sigma2": (2048, 1024),
        "q_a_m_head.rgb.f_mu": (1024, 1024), "q_a_m_head.rgb.f_sigma2": (1024, 1024),
        "q_a_m_head.depth.f_mu": (1024, 1024), "q_a_m_head.depth.f_sigma2": (1024, 1024),
    }
    for m in ("rgb", "depth"):  # p(x|a), p(w|a): a-D1024BR-D1024BR, f_mu D4096 only
        dkbr |= {f"p_x_a.{m}.branches.a.0": (1024, 1024), f"p_x_a.{m}.tail.0.0": (1024, 1024)}
        heads[f"p_x_a_head.{m}.head.f_mu"] = (1024, 4096)
    assert linears == dkbr | heads
    # BatchNorm placement: right after each DkBR's Linear, of its width, then ReLU
    for name, (_, width) in dkbr.items():
        layer = model.get_submodule(name.rsplit(".", 1)[0])
        assert [type(m) for m in layer] == [torch.nn.Linear, torch.nn.BatchNorm1d,
                                            torch.nn.ReLU], name
        assert layer[1].num_features == width, name
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(batchnorms) == len(dkbr)
    # q(y|a): Dropout0.5 before f_mu, no BatchNorm in a head
    assert [type(m) for m in model.q_y_a_head.net] == [torch.nn.Dropout, torch.nn.Linear]
    assert model.q_y_a_head.net[0].p == 0.5
    # the mean-only decoder: unit variance whatever a
    p_x = model.p_x_a_head["rgb"](torch.randn(3, 1024))
    torch.testing.assert_close(p_x.base_dist.scale, torch.ones(3, 4096))


def test_scaled_features_feed_the_model_not_raw_values(tmp_path):
    """What the first layers receive, in training and in evaluation, is the features
    standardised on the training rows: never the raw values (here all near 100)."""
    rng = np.random.default_rng(0)
    n_train, n_test, dims = 30, 10, {"rgb": 7, "depth": 9}
    base = rng.normal(0, 3, n_train)
    raw, scaled = {}, {}
    for m, d in dims.items():
        # every training column a permutation of one vector: the same spread in each, so
        # the floor of `typical_scale` leaves the standardisation exact
        train = np.stack([100 + j + rng.permutation(base) for j in range(d)], 1)
        test = 100 + rng.normal(0, 3, (n_test, d))
        raw[m] = np.vstack([train, test]).astype(np.float32)
        mean, std = train.mean(0), train.std(0)
        scaled[m] = torch.from_numpy(((raw[m] - mean) / std).astype(np.float32))
    label = np.arange(n_train + n_test) % 2
    is_test = np.arange(n_train + n_test) >= n_train
    is_labeled = np.arange(n_train + n_test) < 6
    path = tmp_path / "features.h5"
    write_features(path, FeatureSet(features=raw, label=label, is_test=is_test,
                                    is_labeled=is_labeled, categories=["a", "b"],
                                    attrs={}))
    seen = {True: [], False: []}  # training -> inputs of the first layers

    def first_layer(module, args):
        if isinstance(module, torch.nn.Linear) and module.in_features in (7, 9):
            seen[module.training].append((module.in_features, args[0].detach().clone()))

    cfg = TrainConfig(hidden=8, a_dim=4, z_dim=3, epochs=1, batch_size=16,
                      labeled_batch_size=4, predict_samples=2, device="cpu", compile="never")
    handle = torch.nn.modules.module.register_module_forward_pre_hook(first_layer)
    try:
        train_and_evaluate(path, "ss_hmvae_kl", cfg, tmp_path / "out", progress=False,
                           live=False)
    finally:
        handle.remove()
    width = {d: m for m, d in dims.items()}
    # zero-fill gives the missing modality raw zeros, scaled
    zero_fill = {m: torch.from_numpy(
        ((0 - raw[m][:n_train].mean(0)) / raw[m][:n_train].std(0)).astype(np.float32))[None]
        for m in dims}
    for training, rows_of in ((True, lambda m: scaled[m][:n_train]),
                              (False, lambda m: torch.cat([scaled[m][n_train:],
                                                           zero_fill[m]]))):
        assert seen[training], "the first layers saw nothing"
        for d, x in seen[training]:
            allowed = rows_of(width[d])
            distance = torch.cdist(x.double(), allowed.double()).min(1).values
            assert distance.max() < 1e-4, (training, width[d], x.abs().max())


def test_every_option_at_once_equals_each_alone():
    """`predict_each` fills once per fill and restores the generator for each option."""
    from pipeline.vae.evaluate import predict_each

    model, scaler, x = hmvae(SSHMVAEKL), _scaler(), inputs()
    cfg = TrainConfig(predict_samples=3, iterative_steps=2, seed=4)
    options = [Option(p, f) for f in ("mean", "sample")
               for p in ("monte_carlo", "posterior_mean", "monte_carlo")]
    for method in ("iterative", "unimodal", "zero_fill"):
        evaluation = Evaluation("rgb", ("rgb",), method, True)
        together = predict_each(model, x, evaluation, scaler, cfg, options)
        for option, got in zip(options, together, strict=True):
            alone = predict(model, x, evaluation, scaler, cfg, option)
            torch.testing.assert_close(got, alone, rtol=0, atol=0)
