"""Rehearse the paper's run (profile: paper) at its full size on this machine.

    python bench/rehearse_paper.py [--data /work/rehearsal-data] [--frames 48] [--steps 6]
                                   [--test-rows 256] [--only STAGE ...] [--table]

Generates the synthetic set at the evaluation subset's exact layout and size
(`synthetic.paper_scale`: 51 categories, 300 instances, 900 videos, 41,877 frames, crops of a
few dozen to a few hundred pixels, 16-bit depth with holes, 10 trials), serves it from
127.0.0.1 and runs the real stages with the paper's parameters, each in its own process:

- download, preprocess (148 px) and split (10 trials): at full size;
- finetune and extract: VGG16 at full size on `--frames` labelled (and as many test) frames
  of a bounded copy of the images file; the per-image cost (finetune: 1 epoch against 2;
  extract: 2x against 1x the frames) is extrapolated to the paper's frames;
- features: 10 trials' files of the paper's shape (41,877 x 4096 per modality, float32,
  the split's masks; class-dependent random values: no VGG16 would finish here);
- train: the `mlp` stage for one epoch and the classical peers at full size; every
  generative model probed (`--probe`): the full trial prepared as the stage prepares it,
  `--steps` training steps (after one untimed step) and the evaluations on `--test-rows`
  test rows, timed apart and extrapolated to 200 epochs and the whole test set;
- report: over 9 models x 10 trials of metrics (the probes' copied per trial).

Every stage prints wall time, CPU time, the peak resident memory of its process tree
(sampled every 0.2 s), the bytes it wrote, and the extrapolation to the whole paper run on
this CPU in CPU-hours: extrapolated from CPU time, not wall time, because on a shared
machine the wall time measures the other jobs too; one thread per process
(OMP_NUM_THREADS=1), so a CPU-hour is an hour of one idle core.
Results go to DATA/results.json; `--table` prints the Markdown table of docs/scale.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import PAPER_EPOCHS, PAPER_TRIALS  # noqa: E402
from pipeline.rgbd.synthetic import generate, paper_scale  # noqa: E402

PY = sys.executable
VAE_MODELS = ["m2", "sdgm", "ss_mvae", "ss_hmvae", "ss_hmvae_kl", "mlp"]
CLASSICAL = ["ct_svm", "cotraining", "label_spreading"]
STAGES = ["generate", "download", "preprocess", "split", "finetune", "extract", "features",
          "train", "classical", "report"]
DIM = 4096


# --------------------------------------------------------------------------- measuring


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a process that just ended
            total += p.memory_info().rss
    return total


def size_of(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return total


def measure(name: str, cmd: list[str], *, cwd: Path, outputs: list[Path],
            timeout: float | None = None) -> dict:
    """Run `cmd`; wall, CPU (the whole tree, reaped), peak tree RSS, bytes of `outputs`."""
    print(f"== {name}: {' '.join(map(str, cmd))}", flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", DVC_NO_ANALYTICS="true")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    watched, peak, timed_out = psutil.Process(proc.pid), 0, False
    while proc.poll() is None:
        peak = max(peak, _tree_rss(watched))
        if timeout is not None and time.perf_counter() - start > timeout:
            for child in watched.children(recursive=True):
                child.kill()
            proc.kill()
            timed_out = True
        time.sleep(0.2)
    reader.join()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = {"stage": name, "wall_s": wall, "cpu_s": cpu, "peak_rss": peak,
              "bytes": size_of(outputs), "rc": proc.returncode, "timed_out": timed_out,
              "tail": "".join(lines[-15:])}
    print(f"   {wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS {peak / 2**30:.2f} GiB, "
          f"{result['bytes'] / 2**20:.0f} MiB written, exit {proc.returncode}"
          f"{' (timed out)' if timed_out else ''}", flush=True)
    if proc.returncode != 0 and not timed_out:
        print(result["tail"], flush=True)
    return result


class Served:
    """The data folder over HTTP on 127.0.0.1 (a thread of this process)."""

    def __init__(self, folder: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


# --------------------------------------------------------------------------- inputs


def bounded_images(full: Path, out: Path, rows: int, trial: int) -> None:
    """`rows` frames spread over the full images file, with a split of trial `trial` in
    which every 4th frame is a test frame and the next one labelled."""
    from pipeline.store import (
        ImagesWriter,
        TrialSplit,
        open_images,
        read_images_index,
        write_splits,
    )

    index = read_images_index(full)
    pick = np.linspace(0, len(index) - 1, rows).round().astype(int)
    with open_images(full) as f, ImagesWriter(out, size=index.size, categories=index.categories,
                                              attrs=index.attrs) as writer:
        for a in range(0, rows, 64):
            r = pick[a:a + 64]
            writer.append(rgb=f["rgb"][r], depth=f["depth"][r], label=index.label[r],
                          frame=index.frame[r], instance=index.instance[r],
                          video=index.video[r], index=index.index[r])
    k = np.arange(rows)
    split = TrialSplit(trial=trial, is_test=k % 4 == 0, is_labeled=k % 4 == 1,
                       test_instances=[])
    write_splits(out.with_name(out.stem + "-splits.h5"), frames=index.frame[pick],
                 splits=[split])


def paper_features(images: Path, splits: Path, folder: Path) -> None:
    """10 trials' features files of the paper's shape: one row per frame, 4096 per modality,
    ReLU'd class means plus noise (no VGG16 here), each with its trial's masks. Trial 1 is
    written (and compressed) as the extract stage writes it; the others are copies of it
    with their own masks (the same values: only their size on disk matters here)."""
    import h5py

    from pipeline.store import FeaturesWriter, read_images_index, read_split

    index = read_images_index(images)
    n, classes = len(index), len(index.categories)
    rng = np.random.default_rng(0)
    means = rng.standard_normal((2, classes, DIM), dtype=np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    first = read_split(splits, 1, index.frame)
    with FeaturesWriter(folder / "trial-1.h5", n=n, dims={"rgb": DIM, "depth": DIM},
                        categories=index.categories,
                        attrs={"trial": 1, "rehearsal": "random features"}) as writer:
        for a in range(0, n, 2048):
            b = min(n, a + 2048)
            label = index.label[a:b]
            feats = {m: np.maximum(means[i][label] + rng.standard_normal(
                (b - a, DIM), dtype=np.float32), 0) for i, m in enumerate(("rgb", "depth"))}
            writer.write(a, features=feats, label=label, is_test=first.is_test[a:b],
                         is_labeled=first.is_labeled[a:b], frame=index.frame[a:b])
    for t in range(2, PAPER_TRIALS + 1):
        split = read_split(splits, t, index.frame)
        shutil.copy(folder / "trial-1.h5", folder / f"trial-{t}.h5")
        with h5py.File(folder / f"trial-{t}.h5", "r+") as f:
            f["is_test"][...] = split.is_test
            f["is_labeled"][...] = split.is_labeled
            f.attrs["trial"] = t


# --------------------------------------------------------------------------- train probe


def probe(model_name: str, features: Path, steps: int, test_rows: int, out: Path) -> None:
    """One generative model at the paper's sizes on a full trial: prepare, `steps` steps of
    the training loop, the per-epoch and the final evaluation on `test_rows` rows, timed."""
    import dataclasses

    import torch

    from pipeline.config import load_config
    from pipeline.store import read_features
    from pipeline.vae import MODELS
    from pipeline.vae.data import TrialData, prepare
    from pipeline.vae.experiment import CURVE_ROWS, _build, _curve_accuracy, _metrics
    from pipeline.vae.objective import Batch
    from pipeline.vae.training import fit

    torch.set_num_threads(1)
    cfg = load_config("params.yaml").train  # the rehearsal's: profile paper
    cfg = dataclasses.replace(cfg, epochs=1)
    cpu = torch.device("cpu")
    times: dict[str, float] = {}
    clock = time.process_time  # one thread: CPU time is what an idle core would take
    t0 = clock()
    data_file = read_features(features)
    data = prepare(data_file, cfg.likelihood, cpu)
    times["prepare_s"] = clock() - t0
    n_u, n_test = len(data.unlabelled.x["rgb"]), len(data.test.x["rgb"])

    def head(batch: Batch, k: int) -> Batch:
        return Batch({m: x[:k] for m, x in batch.x.items()},
                     None if batch.y is None else batch.y[:k])

    def part(unlabelled: int) -> TrialData:
        return TrialData(labelled=data.labelled, unlabelled=head(data.unlabelled, unlabelled),
                         test=head(data.test, test_rows), scaler=data.scaler,
                         categories=data.categories, modalities=data.modalities)

    model = _build(model_name, data, cfg, cpu)
    fit(model, part(128), cfg, progress=False)  # one step: first-touch memory, kernel setup
    sub = part(steps * 128)
    t0 = clock()
    fit(model, sub, cfg, progress=False)
    times["step_s"] = (clock() - t0) / steps
    evaluations = MODELS[model_name].evaluations(data.modalities)
    t0 = clock()  # the train stage's per-epoch learning-curve evaluation
    _curve_accuracy(model, sub, sub.test, evaluations, cfg)
    curve_rows = min(n_test, CURVE_ROWS)
    times["epoch_eval_per_row_s"] = (clock() - t0) / test_rows
    t0 = clock()  # the final one, every prediction option, as the stage writes it
    metrics = _metrics(model, sub, data_file, features, model_name, cfg, evaluations, [])
    times["final_eval_per_row_s"] = (clock() - t0) / test_rows
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / "metrics.json").write_text(json.dumps(metrics))
    steps_per_epoch = -(-n_u // cfg.batch_size)
    run_s = (times["prepare_s"] + PAPER_EPOCHS * steps_per_epoch * times["step_s"]
             + PAPER_EPOCHS * curve_rows * times["epoch_eval_per_row_s"]
             + n_test * times["final_eval_per_row_s"])
    out.write_text(json.dumps({**times, "n_unlabelled": n_u, "n_test": n_test,
                               "steps_per_epoch": steps_per_epoch, "run_s": run_s}, indent=1))


# --------------------------------------------------------------------------- the rehearsal


def stage_cmd(stage: str, *args: object, sets: tuple[str, ...] = ()) -> list[str]:
    cmd = [PY, "-m", "pipeline", stage, "--params", "params.yaml", *map(str, args)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def rehearse(args: argparse.Namespace) -> None:
    data: Path = args.data
    work = data / "run"
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    text = (work / "params.yaml").read_text()
    text = text.replace("profile: demo", "profile: paper", 1)
    text = text.replace("trials: [1, 2]\n", f"trials: {list(range(1, PAPER_TRIALS + 1))}\n", 1)
    (work / "params.yaml").write_text(text)
    results_path = data / "results.json"
    wanted = args.only or STAGES

    def record(name: str, result: dict, extrapolated_h: float | None, note: str) -> None:
        result |= {"paper_h": extrapolated_h, "note": note}
        saved = json.loads(results_path.read_text()) if results_path.is_file() else {}
        results_path.write_text(json.dumps(saved | {name: result}, indent=1))

    archive, trials = data / "rgbd-dataset_eval.zip", data / "testinstance_ids.txt"
    if "generate" in wanted and not archive.is_file():
        t0 = time.perf_counter()
        generate(paper_scale(), archive, trials, workers=args.workers)
        print(f"generated {archive} in {time.perf_counter() - t0:.0f} s")
    raw, images, splits = work / "raw", work / "images.h5", work / "splits.h5"
    if "download" in wanted:
        server = Served(data)
        try:
            r = measure("download", stage_cmd(
                "download", "--out", raw, "--cache", work / "downloads", "--no-progress",
                sets=(f"download.url={server.base}/{archive.name}",
                      f"download.splits_url={server.base}/{trials.name}",
                      f"download.size={archive.stat().st_size}")),
                cwd=work, outputs=[raw, work / "downloads"])
        finally:
            server.close()
        record("download", r, r["cpu_s"] / 3600, "full size, from 127.0.0.1")
    if "preprocess" in wanted:
        r = measure("preprocess", stage_cmd("preprocess", "--raw", raw, "--out", images,
                                            "--no-progress"), cwd=work, outputs=[images])
        record("preprocess", r, r["cpu_s"] / 3600, "full size, 148 px")
    if "split" in wanted:
        r = measure("split", stage_cmd("split", "--images", images, "--trials-file",
                                       raw / "testinstance_ids.txt", "--out", splits),
                    cwd=work, outputs=[splits])
        record("split", r, r["cpu_s"] / 3600, "full size, 10 trials")
    counts = _split_counts(images, splits) if splits.is_file() else None
    small, smaller = work / "bounded.h5", work / "bounded-half.h5"
    ckpt = work / "vgg16"
    if "finetune" in wanted:
        bounded_images(images, small, 4 * args.frames, trial=1)
        bounded_images(images, smaller, 2 * args.frames, trial=1)
        sets = ("finetune.weights=none",)
        one = measure("finetune", stage_cmd(
            "finetune", "--images", small, "--splits", work / "bounded-splits.h5",
            "--trial", 1, "--modality", "rgb", "--out", ckpt / "trial-1-rgb",
            sets=(*sets, "finetune.epochs=1")), cwd=work, outputs=[ckpt / "trial-1-rgb"])
        two = measure("finetune 2 epochs", stage_cmd(
            "finetune", "--images", small, "--splits", work / "bounded-splits.h5",
            "--trial", 1, "--modality", "depth", "--out", ckpt / "trial-1-depth",
            sets=(*sets, "finetune.epochs=2")), cwd=work, outputs=[ckpt / "trial-1-depth"])
        epoch_s = two["cpu_s"] - one["cpu_s"]  # one epoch of `frames` images + checkpoint
        per_image = epoch_s / args.frames
        hours = None
        if counts:
            run_s = one["cpu_s"] + (PAPER_EPOCHS * counts["labelled"] - args.frames) * per_image
            hours = 2 * PAPER_TRIALS * run_s / 3600
        one["per_image_s"] = per_image
        record("finetune", one, hours,
               f"VGG16 full size, {args.frames} labelled + {args.frames} test frames; "
               f"1 epoch vs 2: {epoch_s:.1f} s/epoch ({per_image:.2f} s per image incl. "
               f"the per-epoch checkpoint), x 200 epochs x labelled frames x 20 runs")
    if "extract" in wanted:
        runs = []
        for path, rows in ((smaller, 2 * args.frames), (small, 4 * args.frames)):
            runs.append(measure(f"extract {rows} frames", stage_cmd(
                "extract", "--images", path, "--splits", path.with_name(
                    path.stem + "-splits.h5"), "--trial", 1, "--checkpoints", ckpt,
                "--out", work / f"features-{rows}.h5"), cwd=work,
                outputs=[work / f"features-{rows}.h5"]))
        per_frame = (runs[1]["cpu_s"] - runs[0]["cpu_s"]) / (2 * args.frames)
        hours = None
        if counts:
            hours = PAPER_TRIALS * (runs[0]["cpu_s"] + (counts["frames"] - 2 * args.frames)
                              * per_frame) / 3600
        runs[1]["per_frame_s"] = per_frame
        record("extract", runs[1], hours,
               f"VGG16 full size, {4 * args.frames} vs {2 * args.frames} frames: "
               f"{per_frame:.3f} s per frame (both modalities) x 41,877 x 10 trials")
    features = work / "features"
    if "features" in wanted:
        t0 = time.perf_counter()
        paper_features(images, splits, features)
        r = {"stage": "features", "wall_s": time.perf_counter() - t0, "cpu_s": None,
             "peak_rss": None, "bytes": size_of([features]), "rc": 0}
        record("features", r, None, "10 random files of the paper's shape (not a stage)")
    if "train" in wanted:
        out = work / "models"
        r = measure("train mlp", stage_cmd(
            "train", "--features", features / "trial-1.h5", "--model", "mlp", "--out",
            out / "mlp" / "trial-1", "--no-progress", sets=("train.epochs=1",)),
            cwd=work, outputs=[out / "mlp" / "trial-1"])
        record("train mlp 1 epoch", r, None, "the real stage, full size, 1 epoch")
        for model in VAE_MODELS:
            dest = work / "probes" / model / "trial-1" / "probe.json"
            r = measure(f"train probe {model}", [
                PY, Path(__file__), "--probe", model, "--features", features / "trial-1.h5",
                "--steps", args.steps, "--test-rows", args.test_rows, "--out", dest],
                cwd=work, outputs=[])
            if r["rc"] == 0:
                p = json.loads(dest.read_text())
                r |= p
                record(f"train {model}", r, PAPER_TRIALS * p["run_s"] / 3600,
                       f"{args.steps} steps ({p['step_s']:.2f} s each) x "
                       f"{p['steps_per_epoch']} x 200 epochs; evaluation on "
                       f"{args.test_rows} of {p['n_test']} test rows, per epoch "
                       f"{p['epoch_eval_per_row_s'] * 1000:.1f} ms/row and final "
                       f"{p['final_eval_per_row_s'] * 1000:.1f} ms/row")
            else:
                record(f"train {model}", r, None, "probe failed")
    if "classical" in wanted:
        out = work / "models"
        for model in CLASSICAL:
            r = measure(f"train {model}", stage_cmd(
                "train", "--features", features / "trial-1.h5", "--model", model, "--out",
                out / model / "trial-1", "--no-progress"), cwd=work,
                outputs=[out / model / "trial-1"], timeout=args.classical_timeout)
            hours = PAPER_TRIALS * r["cpu_s"] / 3600 if r["rc"] == 0 else None
            note = "full size, trial 1 (x 10 trials)"
            if r["timed_out"]:
                note = f"did not finish in {args.classical_timeout:.0f} s: stopped"
            record(f"train {model}", r, hours, note)
    if "report" in wanted:
        tree = work / "report-input"
        _report_tree([work / "models", work / "probes"], ckpt, tree)
        r = measure("report", stage_cmd("report", "--vae", tree / "vae", "--vgg16",
                                        tree / "vgg16", "--out", work / "reports"),
                    cwd=work, outputs=[work / "reports"])
        record("report", r, r["cpu_s"] / 3600, "9 models x 10 trials of metrics")
    print_table(json.loads(results_path.read_text()))


def _split_counts(images: Path, splits: Path) -> dict[str, int]:
    from pipeline.store import read_images_index, read_split

    index = read_images_index(images)
    split = read_split(splits, 1, index.frame)
    return {"frames": len(index), "labelled": int(split.is_labeled.sum()),
            "test": int(split.is_test.sum())}


def _report_tree(roots: list[Path], ckpt: Path, tree: Path) -> None:
    """Metrics of every model and trial: each model's trial-1 run, copied to every trial
    (the real `mlp` stage's over its probe's)."""
    shutil.rmtree(tree, ignore_errors=True)
    runs = {f.parent.name: f for root in reversed(roots) for f in root.glob("*/trial-1")}
    for folder in runs.values():
        for t in range(1, PAPER_TRIALS + 1):
            dest = tree / "vae" / folder.parent.name / f"trial-{t}"
            dest.mkdir(parents=True, exist_ok=True)
            for name in ("metrics.json", "config.json"):
                if (folder / name).is_file():
                    shutil.copy(folder / name, dest / name)
    for modality in ("rgb", "depth"):
        for t in range(1, PAPER_TRIALS + 1):
            dest = tree / "vgg16" / f"trial-{t}-{modality}"
            dest.mkdir(parents=True)
            shutil.copy(ckpt / f"trial-1-{modality}" / "metrics.json", dest / "metrics.json")


def print_table(results: dict) -> None:
    print("| stage | wall | CPU | peak RSS (tree) | written | paper run, CPU-hours | how |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        cpu = f"{r['cpu_s']:.0f} s" if r.get("cpu_s") is not None else "-"
        rss = f"{r['peak_rss'] / 2**30:.2f} GiB" if r.get("peak_rss") else "-"
        hours = "-"
        if r.get("paper_h") is not None:
            h = r["paper_h"]
            hours = f"{h:,.0f} h" if h >= 10 else f"{h:.1f} h" if h >= 1 else f"{h * 60:.1f} min"
        status = "" if r.get("rc") == 0 else f" (exit {r.get('rc')})"
        print(f"| {name}{status} | {r['wall_s']:.0f} s | {cpu} | {rss} | "
              f"{r['bytes'] / 2**20:,.0f} MiB | {hours} | {r.get('note', '')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/work/rehearsal-data"))
    parser.add_argument("--frames", type=int, default=48,
                        help="labelled frames of the bounded finetune; extract gets 4x, 2x")
    parser.add_argument("--steps", type=int, default=6, help="training steps per model probe")
    parser.add_argument("--test-rows", type=int, default=256, help="test rows per probe")
    parser.add_argument("--workers", type=int, default=2, help="processes generating the set")
    parser.add_argument("--classical-timeout", type=float, default=1800.0)
    parser.add_argument("--only", nargs="+", choices=STAGES)
    parser.add_argument("--table", action="store_true", help="print the table and stop")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--features", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(args.probe, args.features, args.steps, args.test_rows, args.out)
    elif args.table:
        print_table(json.loads((args.data / "results.json").read_text()))
    else:
        rehearse(args)


if __name__ == "__main__":
    main()
