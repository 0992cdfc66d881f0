"""Mutation check of the model-math tests: does each test catch the bug it is named for?

Each mutation below replaces one exact snippet of the source by a plausible wrong version
(the paper's equations, Appendix C's networks, the co-training quota), then runs the tests
that should notice in a temporary copy of the repository (pipeline/, tests/, pyproject.toml;
the working tree is never touched). A mutation is

- caught: the named tests fail on the mutated code;
- NOT caught: they pass, so they check less than their names say;
- snippet-not-found: the snippet no longer occurs exactly once in the file (the code moved
  or was rewritten: re-anchor the mutation to the new code; never drop it silently);
- error: the tests could not run (a test that does not exist, a collection error).

Before any mutation the named tests must pass on the unmutated copy (otherwise nothing a
mutation shows means anything). Usage, from the repository root:

    .venv/bin/python tools/mutate.py            # every mutation
    .venv/bin/python tools/mutate.py NAME ...   # the named ones
    .venv/bin/python tools/mutate.py --list

Exit status 1 unless every mutation is caught. Takes a few minutes (one pytest run each).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("pipeline", "tests", "pyproject.toml")
PYTEST = ("-m", "pytest", "-x", "-q", "-p", "no:cacheprovider")
TIMEOUT_S = 600

MATH = "tests/test_vae_math.py::"
FIDELITY = "tests/test_vae_fidelity.py::"
COTRAIN = "tests/test_cotrain.py::"


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the repository root
    snippet: str  # must occur exactly once in `file`
    replacement: str
    tests: tuple[str, ...]  # pytest node ids expected to fail on the mutated code
    description: str


MUTATIONS = [
    Mutation(
        "eq4-equal-weights", "pipeline/vae/hmvae.py",
        "self.objective.labelled_share)",
        "0.5)",
        (FIDELITY + "test_training_weights_eq_4_by_the_sets_shares",),
        "eq. (4): the labelled and unlabelled batch means of the KL weighted 0.5 / 0.5, "
        "not by the sets' shares"),
    Mutation(
        "eq4-share-not-passed", "pipeline/vae/__init__.py",
        "temperature=cfg.temperature, labelled_share=labelled_share)",
        "temperature=cfg.temperature)",
        (FIDELITY + "test_training_weights_eq_4_by_the_sets_shares",),
        "eq. (4): the labelled share measured on the data never reaches the objective"),
    Mutation(
        "variance-head-on-fixed-decoder", "pipeline/vae/layers.py",
        '"gaussian_fixed": UnitVarianceGaussianHead,',
        '"gaussian_fixed": lambda i, o: GaussianHead(i, o, min_variance=DECODER_MIN_VARIANCE),',
        (FIDELITY + "test_every_network_of_ss_hmvae_kl_has_appendix_c_sizes",),
        "Appendix C: p(x|a), p(w|a) get a variance head f_sigma2 under the mean-only "
        "configuration"),
    Mutation(
        "batchnorm-moved-before-linear", "pipeline/vae/layers.py",
        "super().__init__(nn.Linear(in_features, out_features), nn.BatchNorm1d(out_features),",
        "super().__init__(nn.BatchNorm1d(in_features), nn.Linear(in_features, out_features),",
        (FIDELITY + "test_every_network_of_ss_hmvae_kl_has_appendix_c_sizes",),
        "Appendix C: DkBR's BatchNorm moved in front of the Linear layer (same count)"),
    Mutation(
        "gumbel-hard-y-in-q_z", "pipeline/vae/hmvae.py",
        "q_z = self.q_z_ay_head(self.q_z_ay(a=a, y=y))",
        "q_z = self.q_z_ay_head(self.q_z_ay(a=a, y=y.round()))",
        (FIDELITY + "test_gumbel_unlabelled_terms_by_hand",),
        "eq. (2), SS-HMVAE: q(z|a,y) of an unlabelled example given a rounded y, not the "
        "Gumbel-softmax sample"),
    Mutation(
        "gumbel-temperature-ignored", "pipeline/vae/objective.py",
        "temperature = torch.full((), self.objective.temperature, device=logits.device)",
        "temperature = torch.full((), 1.0, device=logits.device)",
        (FIDELITY + "test_gumbel_unlabelled_terms_by_hand",),
        "eq. (2): the Gumbel-softmax temperature of train.temperature ignored"),
    Mutation(
        "labelled-bound-wrong-class", "pipeline/vae/objective.py",
        "y = one_hot(batch.y, self.n_classes)",
        "y = one_hot((batch.y + 1) % self.n_classes, self.n_classes)",
        (MATH + "test_loss_is_equation_3",),
        "eq. (3): the labelled bound L(x, y) and log q(y|x) evaluated at the wrong class"),
    Mutation(
        "unlabelled-bound-sign", "pipeline/vae/objective.py",
        "objective = bound_l + self.objective.alpha * classifier + bound_u",
        "objective = bound_l + self.objective.alpha * classifier - bound_u",
        (MATH + "test_loss_is_equation_3",),
        "eq. (3): the unlabelled bound U(x) subtracted"),
    Mutation(
        "beta-dropped", "pipeline/vae/hmvae.py",
        '{"-beta*kl_a": -self.objective.beta * div}',
        '{"-beta*kl_a": -div}',
        (MATH + "test_loss_is_equation_3",),
        "eq. (4): the KL terms of SS-HMVAE-kl not weighted by beta"),
    Mutation(
        "alpha-gradient-leak", "pipeline/vae/objective.py",
        "objective = bound_l + self.objective.alpha * classifier + bound_u",
        "objective = bound_l + self.objective.alpha * classifier + bound_u + "
        "(classifier - classifier.detach())",
        (MATH + "test_alpha_zero_removes_classifier_term",),
        "eq. (3): alpha = 0 keeps the classifier term's gradient (its value is gone)"),
    Mutation(
        "raw-features-fed", "pipeline/vae/data.py",
        "x = {m: torch.from_numpy(scaler.transform(m, f[rows])).to(device)",
        "x = {m: torch.from_numpy(f[rows]).to(device)",
        (FIDELITY + "test_scaled_features_feed_the_model_not_raw_values",),
        "scaling: the model is given the raw features"),
    Mutation(
        "raw-test-features-fed", "pipeline/vae/data.py",
        "test=batch(data.is_test, True),",
        "test=Batch({m: torch.from_numpy(f[data.is_test]).to(device) for m, f in "
        "data.features.items()}, torch.from_numpy(data.label[data.is_test]).to(device)),",
        (FIDELITY + "test_scaled_features_feed_the_model_not_raw_values",),
        "scaling: the test rows reach evaluation unscaled"),
    Mutation(
        "iterative-zero-steps", "pipeline/vae/hmvae.py",
        "for _ in range(steps):",
        "for _ in range(0):",
        (MATH + "test_iterative_sampling_fills_the_missing_modality",),
        "Appendix D: iterative sampling returns its initial noise (no step taken)"),
    Mutation(
        "iterative-fresh-noise", "pipeline/vae/hmvae.py",
        'value = (mean_of(p_x) if fill == "mean" else draw(p_x, generator)).to(given.dtype)',
        "value = torch.randn(shape, generator=generator, device=given.device)",
        (MATH + "test_iterative_sampling_fills_the_missing_modality",),
        "Appendix D: each step draws fresh noise instead of reconstructing from p(x|a)"),
    Mutation(
        "sdgm-labelled-no-log-q-a", "pipeline/vae/sdgm.py",
        '"log_p_a-log_q_a": p_a.log_prob(a) - ctx["log_q_a"],',
        '"log_p_a-log_q_a": p_a.log_prob(a),',
        (MATH + "test_labelled_bound_by_hand[sdgm]",),
        "SDGM labelled bound: - log q(a|x) left out"),
    Mutation(
        "sdgm-unlabelled-hard-y", "pipeline/vae/sdgm.py",
        "p_x = self.p_x_azy_head(self.p_x_azy(a=a, z=z, y=y))",
        "p_x = self.p_x_azy_head(self.p_x_azy(a=a, z=z, y=y.round()))",
        (MATH + "test_unlabelled_bound_by_hand[sdgm]",),
        "SDGM unlabelled bound: p(x|a,z,y) given a rounded y, not the Gumbel-softmax sample"),
    Mutation(
        "ss-mvae-labelled-one-modality", "pipeline/vae/mvae.py",
        "for m in self.modalities:",
        "for m in self.modalities[:1]:",
        (MATH + "test_labelled_bound_by_hand[ss_mvae]",),
        "SS-MVAE labelled bound: only the first modality's log p(x_m|z,y)"),
    Mutation(
        "ss-mvae-unlabelled-hard-y", "pipeline/vae/mvae.py",
        "q_z = self.q_z_xy_head(self.q_z_xy(**x, y=y))",
        "q_z = self.q_z_xy_head(self.q_z_xy(**x, y=y.round()))",
        (MATH + "test_unlabelled_bound_by_hand[ss_mvae]",),
        "SS-MVAE unlabelled bound: q(z|x,w,y) given a rounded y, not the Gumbel-softmax "
        "sample"),
    Mutation(
        "cotrain-quota-later-rounds", "pipeline/classical/cotrain.py",
        "chosen.append(ranked[:quota])",
        "chosen.append(ranked[:quota - (round_ > 1)])",
        (COTRAIN + "test_quota_per_category_view_and_round",),
        "co-training: one fewer per category after the first round"),
    Mutation(
        "cotrain-quota-second-view", "pipeline/classical/cotrain.py",
        "picked = {v: _select(result.classifiers[v], unlabelled[v][rows], n_classes, quota,",
        "picked = {v: _select(result.classifiers[v], unlabelled[v][rows], n_classes, "
        "quota - (v == views[1]),",
        (COTRAIN + "test_quota_per_category_view_and_round",),
        "co-training: the second view hands over one fewer per category"),
    Mutation(
        "cotrain-default-quota", "pipeline/classical/cotrain.py",
        "math.ceil(n_unlabelled / (2 * n_classes * self.rounds))",
        "math.ceil(n_unlabelled / (n_classes * self.rounds))",
        (COTRAIN + "test_quota_per_category_view_and_round",),
        "co-training: quota 0 hands over twice the share of the pool per round"),
]


def copy_repository(target: Path) -> None:
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, target / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, target / name)


def run_tests(root: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    """pytest's exit status and its last lines, run in `root` (whose pipeline/ it imports)."""
    proc = subprocess.run([sys.executable, *PYTEST, *tests], cwd=root, capture_output=True,
                          text=True, timeout=TIMEOUT_S, env=_env(root))
    return proc.returncode, "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])


def _env(root: Path) -> dict[str, str]:
    import os

    # one thread unless told otherwise: the tests' tensors are tiny, and torch's threads
    # spin against each other on a busy machine (a 0.1 s test took 7 s with two)
    return {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONPATH": str(root),
            "PYTHONDONTWRITEBYTECODE": "1"}


def check_imports_copy(root: Path) -> None:
    """The tests must import the copy's pipeline/, not the installed (editable) one."""
    out = subprocess.run([sys.executable, "-c", "import pipeline; print(pipeline.__file__)"],
                         cwd=root, capture_output=True, text=True, env=_env(root), check=True)
    if not Path(out.stdout.strip()).resolve().is_relative_to(root.resolve()):
        sys.exit(f"mutate: the copy imports {out.stdout.strip()}, not its own pipeline/")


def apply(root: Path, mutation: Mutation) -> int:
    """Replace the snippet in the copy; return how often it occurred (done only if once)."""
    path = root / mutation.file
    if not path.is_file():
        return 0
    text = path.read_text()
    count = text.count(mutation.snippet)
    if count == 1:
        path.write_text(text.replace(mutation.snippet, mutation.replacement))
    return count


def judge(mutation: Mutation, known: set[str]) -> tuple[str, str]:
    """(verdict, detail) of one mutation, in a fresh copy of the repository."""
    missing = [t for t in mutation.tests if t not in known]
    if missing:
        return "error", f"no such test: {', '.join(missing)}"
    with tempfile.TemporaryDirectory(prefix="mutate-") as tmp:
        root = Path(tmp)
        copy_repository(root)
        count = apply(root, mutation)
        if count != 1:
            return "snippet-not-found", (f"{mutation.file}: the snippet occurs {count} times "
                                         f"(re-anchor it): {mutation.snippet!r}")
        rc, tail = run_tests(root, mutation.tests)
    if rc == 1:  # pytest's summary line says which check failed
        return "caught", next((line for line in tail.splitlines()
                               if line.startswith("FAILED")), "")
    if rc == 0:
        return "NOT caught", f"{', '.join(mutation.tests)} passed"
    return "error", f"pytest exit status {rc}: {tail}"


def baseline(mutations: list[Mutation]) -> set[str]:
    """The named tests that exist; each passes on the unmutated code, or the run stops."""
    tests = tuple(dict.fromkeys(t for m in mutations for t in m.tests))
    with tempfile.TemporaryDirectory(prefix="mutate-") as tmp:
        root = Path(tmp)
        copy_repository(root)
        check_imports_copy(root)
        files = tuple(dict.fromkeys(t.split("::")[0] for t in tests))
        listed = subprocess.run([sys.executable, *PYTEST, "--collect-only", *files], cwd=root,
                                capture_output=True, text=True, env=_env(root)).stdout
        full = {line.strip() for line in listed.splitlines() if "::" in line}
        ids = full | {i.split("[")[0] for i in full}  # a parametrized test by its base name
        known = {t for t in tests if t in ids}
        rc, tail = run_tests(root, tuple(known)) if known else (0, "")
    if rc != 0:
        sys.exit(f"mutate: the named tests do not pass on the unmutated code (exit {rc}):\n"
                 f"{tail}")
    return known


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and stop")
    args = parser.parse_args(argv)
    by_name = {m.name: m for m in MUTATIONS}
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        parser.error(f"unknown mutation(s) {unknown}; --list shows them")
    chosen = [by_name[n] for n in args.names] or MUTATIONS
    if args.list:
        for m in chosen:
            print(f"{m.name:32} {m.file}: {m.description}")
        return 0
    known = baseline(chosen)
    caught = 0
    for i, m in enumerate(chosen, 1):
        verdict, detail = judge(m, known)
        caught += verdict == "caught"
        print(f"[{i}/{len(chosen)}] {verdict:17} {m.name}: {m.description}", flush=True)
        if detail:
            print(f"    {detail}", flush=True)
    print(f"caught {caught} of {len(chosen)}")
    return 0 if caught == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
