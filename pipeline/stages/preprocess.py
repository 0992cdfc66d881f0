"""`python -m pipeline preprocess --raw data/raw --out data/images.h5`.

Appendix A: every frame to a square RGB image and a jet-coloured depth image of
`preprocess.size` pixels, streamed into `ssmvae-images/1`. Writes `<out>-config.json` and the
report `preprocess-report.json` (counts, and every skipped frame with its reason) beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from pipeline.images import TooManySkipped, preprocess_dataset
from pipeline.rgbd.layout import require_download
from pipeline.stages import load, run_stage, stage_parser


def main(argv: list[str]) -> int:
    parser = stage_parser("preprocess", __doc__.splitlines()[2])
    parser.add_argument("--raw", default="data/raw", help="extracted dataset folder")
    parser.add_argument("--out", default="data/images.h5", help="images file to write")
    parser.add_argument("--report", help="JSON report (default: preprocess-report.json "
                        "beside --out)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    def body() -> None:
        config = load(args)
        cfg = config.preprocess
        out = Path(args.out)
        report_path = Path(args.report or out.with_name("preprocess-report.json"))
        require_download(args.raw)  # never read a folder the download stage did not finish
        with tqdm(unit="frame", disable=args.no_progress, desc="preprocess") as bar:
            try:
                report = preprocess_dataset(
                    args.raw, out, size=cfg.size, chunk=cfg.chunk, workers=cfg.workers,
                    max_skip_fraction=cfg.max_skip_fraction, source=config.download.source,
                    progress=bar.update)
            except TooManySkipped as err:
                write_report(report_path, err.report.to_dict())
                raise
        write_report(report_path, report.to_dict())
        config.dump(out.with_name(out.stem + "-config.json"))
        print(f"{out}: {report.written} frames of {report.frames} written "
              f"({len(report.skipped)} skipped, listed in {report_path})")
        for item in report.skipped[:20]:
            print(f"  skipped {item['frame']}: {item['reason']}")

    return run_stage(body)


def write_report(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
