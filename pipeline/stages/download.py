"""`python -m pipeline download [--url URL] [--splits-url URL] --out data/raw`.

Fetches `rgbd-dataset_eval.zip` and `testinstance_ids.txt` (http(s), file:// or a path) into
the download cache and extracts the archive into `--out`. With `download.source: synthetic`
(the demo profile) and no `--url`, the bundled synthetic set is generated into the cache first
and then goes through the same extraction. A complete `--out` is left untouched.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import DownloadConfig
from pipeline.rgbd.download import download_dataset
from pipeline.rgbd.synthetic import VERSION, SyntheticSpec, generate
from pipeline.stages import load, run_stage, stage_parser


def main(argv: list[str]) -> int:
    parser = stage_parser("download", __doc__.splitlines()[2])
    parser.add_argument("--url", help="dataset archive (default: download.url)")
    parser.add_argument("--splits-url", help="testinstance_ids.txt (default: download.splits_url)")
    parser.add_argument("--out", default="data/raw", help="extracted dataset folder")
    parser.add_argument("--cache", default="data/downloads",
                        help="where archives are downloaded or generated (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    def body() -> None:
        config = load(args)
        cfg = config.download
        cache = Path(args.cache)
        url, splits_url = args.url or cfg.url, args.splits_url or cfg.splits_url
        size, sha256 = cfg.size, cfg.sha256
        if cfg.source == "synthetic" and args.url is None:
            url, splits_url = synthetic_archive(cfg, cache)
            size, sha256 = 0, ""
        elif args.url is not None:
            size, sha256 = 0, ""  # the configured size and hash describe download.url only
        record = download_dataset(args.out, url=url, splits_url=splits_url, cache=cache,
                                  size=size, sha256=sha256, retries=cfg.retries,
                                  timeout_s=cfg.timeout_s, backoff_s=cfg.backoff_s,
                                  progress=not args.no_progress)
        config.dump(Path(args.out) / "config.json")
        state = "updated from" if record["changed"] else "already complete:"
        archive = record["archive"]
        print(f"{args.out}: {state} {archive['file']} ({archive['size']} bytes, "
              f"SHA-256 {archive['sha256']})")

    return run_stage(body)


def synthetic_archive(cfg: DownloadConfig, cache: Path) -> tuple[str, str]:
    """Generate the synthetic archive and trials file into `cache` once per spec."""
    spec = SyntheticSpec(seed=cfg.synthetic_seed, categories=cfg.synthetic_categories,
                         instances=cfg.synthetic_instances, frames=cfg.synthetic_frames)
    name = (f"synthetic-v{VERSION}-seed{spec.seed}-{spec.categories}c{spec.instances}i"
            f"{spec.frames}f")
    archive = cache / f"{name}.zip"
    trials = cache / f"{name}-testinstance_ids.txt"
    if not (archive.is_file() and trials.is_file()):
        print(f"generating the synthetic RGB-D set into {archive}")
        generate(spec, archive, trials)
    return str(archive), str(trials)
