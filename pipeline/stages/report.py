"""`python -m pipeline report --vae models/vae --classical models/classical --out reports`.

Table 1 from every `train` stage's and `classical` stage's `metrics.json` (models in
`train.models` and `classical.models`, trials in `split.trials`) and the fine-tuned VGG16
networks' own test accuracies. Writes into `--out`: `table1.md`, `table1.json` (mean, std
and every trial, also of every prediction option), `table1-trials.csv` (one line per row,
input and trial), `table1.png`, `metrics/<row>.json` (the DVC metrics: each row's means and
stds) and `curves/` (the learning curves, mean over trials per model: a CSV for
`dvc plots show` and a PNG each). The paper's numbers go beside ours when the paper profile
ran (`report.paper_reference`). No model code runs here: titles are `pipeline/titles.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.atomic import write_text
from pipeline.report import (
    CURVES,
    collect,
    curve_csv,
    headline,
    options,
    plot,
    plot_curve,
    read_curves,
    read_runs,
    to_json,
    to_markdown,
    trials_csv,
)
from pipeline.stages import load, out_folder, run_stage, stage_parser


def main(argv: list[str]) -> int:
    parser = stage_parser("report", __doc__.splitlines()[0])
    parser.add_argument("--vae", default="models/vae", type=Path,
                        help="train outputs: <model>/trial-K/metrics.json (%(default)s)")
    parser.add_argument("--classical", default="models/classical", type=Path,
                        help="classical outputs: <model>/trial-K/metrics.json (%(default)s)")
    parser.add_argument("--vgg16", default="models/vgg16", type=Path,
                        help="finetune outputs: trial-K-<modality>/ (%(default)s)")
    parser.add_argument("--out", default="reports", type=Path, help="folder (%(default)s)")
    args = parser.parse_args(argv)

    def body() -> None:
        out_folder(args.out)
        config = load(args)
        trials = config.split.trials
        vae = {m: args.vae / m for m in config.train.models}
        folders = vae | {m: args.classical / m for m in config.classical.models}
        runs = read_runs(folders, trials)
        rows, by_option = collect(runs, vgg16=args.vgg16, trials=trials), options(runs)
        paper = config.report.paper_reference and config.profile == "paper"
        table = to_json(rows, profile=config.profile, trials=trials, paper=paper,
                        by_option=by_option)
        (args.out / "metrics").mkdir(parents=True, exist_ok=True)
        write_text(args.out / "table1.json", json.dumps(table, indent=2) + "\n")
        write_text(args.out / "table1-trials.csv", trials_csv([*rows, *by_option], trials))
        metrics = headline(rows)
        for stale in set((args.out / "metrics").glob("*.json")) - {
                args.out / "metrics" / f"{name}.json" for name in metrics}:
            stale.unlink()  # a row no longer in the table
        for name, values in metrics.items():
            write_text(args.out / "metrics" / f"{name}.json", json.dumps(values) + "\n")
        markdown = to_markdown(rows, profile=config.profile, trials=trials, paper=paper)
        write_text(args.out / "table1.md", markdown)
        plot(rows, args.out / "table1.png",
             title=f"Table 1 ({config.profile} profile, {len(trials)} trials)")
        (args.out / "curves").mkdir(exist_ok=True)
        for name, (metric, title) in CURVES.items():
            scale = 100.0 if metric.startswith("test/accuracy/") else 1.0
            curves = read_curves(vae, trials, metric)
            write_text(args.out / "curves" / f"{name}.csv",
                       curve_csv(curves, list(vae), scale))
            plot_curve(curves, args.out / "curves" / f"{name}.png", title=title, scale=scale)
        print(markdown)

    return run_stage(body)
