"""`python -m pipeline report --vae models/vae --vgg16 models/vgg16 --out reports`: Table 1.

Reads every `train` stage's `metrics.json` (models in `train.models`, trials in
`split.trials`) and the fine-tuned VGG16 networks' own test accuracies, and writes
`table1.md`, `table1.json`, `table1.png` and `metrics.json` (Table 1's means and stds under
short flat names, what `dvc exp show` and `dvc metrics show` read) into `--out`.
The paper's numbers go beside ours when the paper profile ran (`report.paper_reference`).
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.atomic import write_text
from pipeline.report import collect, headline, plot, to_json, to_markdown
from pipeline.stages import load, out_folder, run_stage, stage_parser


def main(argv: list[str]) -> int:
    parser = stage_parser("report", __doc__.splitlines()[0])
    parser.add_argument("--vae", default="models/vae", type=Path,
                        help="train outputs: VAE/<model>/trial-K/metrics.json (%(default)s)")
    parser.add_argument("--vgg16", default="models/vgg16", type=Path,
                        help="finetune outputs: VGG16/trial-K-<modality>/ (%(default)s)")
    parser.add_argument("--out", default="reports", type=Path, help="folder (%(default)s)")
    args = parser.parse_args(argv)

    def body() -> None:
        from pipeline.classical import CLASSICAL
        from pipeline.vae import MODELS  # imported late: it pulls in torch

        out_folder(args.out)
        config = load(args)
        trials = config.split.trials
        rows = collect(vae=args.vae, vgg16=args.vgg16, models=config.train.models,
                       trials=trials, titles={k: v.title for k, v in (MODELS | CLASSICAL).items()})
        paper = config.report.paper_reference and config.profile == "paper"
        args.out.mkdir(parents=True, exist_ok=True)
        table = to_json(rows, profile=config.profile, trials=trials, paper=paper)
        write_text(args.out / "table1.json", json.dumps(table, indent=2) + "\n")
        write_text(args.out / "metrics.json", json.dumps(headline(rows), indent=1) + "\n")
        markdown = to_markdown(rows, profile=config.profile, trials=trials, paper=paper)
        write_text(args.out / "table1.md", markdown)
        plot(rows, args.out / "table1.png",
             title=f"Table 1 ({config.profile} profile, {len(trials)} trials)")
        print(markdown)

    return run_stage(body)
