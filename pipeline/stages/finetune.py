"""`python -m pipeline finetune --trial K --modality rgb|depth`: VGG16 on the labelled frames.

Writes a checkpoint directory (`--out`, default `models/vgg16/trial-K-MODALITY`): the final
weights `model.pt`, the resumable `state.pt` while training, `metrics.json` (the network's own
test accuracy), `live/` (DVCLive) and `config.json` (the effective parameters). A killed run
resumes from its last complete epoch when started again with the same parameters.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import torch

from pipeline import distributed
from pipeline.devices import resolve_device
from pipeline.features.finetune import MODALITIES, finetune
from pipeline.stages import code_stamp, load, out_folder, run_stage, stage_parser


def main(argv: list[str]) -> int:
    parser = stage_parser("finetune", __doc__)
    parser.add_argument("--images", default="data/images.h5", help="images file (%(default)s)")
    parser.add_argument("--splits", default="data/splits.h5", help="splits file (%(default)s)")
    parser.add_argument("--trial", type=int, required=True, help="trial number")
    parser.add_argument("--modality", choices=MODALITIES, required=True)
    parser.add_argument("--out", help="checkpoint directory (models/vgg16/trial-K-MODALITY)")
    parser.add_argument("--cache-dir", default=str(Path(torch.hub.get_dir()) / "checkpoints"),
                        help="where downloaded ImageNet weights are kept (%(default)s)")
    args = parser.parse_args(argv)

    def body() -> int | None:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        config = load(args)
        relaunched = distributed.relaunch(config.launch.processes, "finetune", argv)
        if relaunched is not None:
            return relaunched
        world = distributed.world_from_env()
        params = config.finetune
        device = distributed.init(world, resolve_device(params.device), config.launch.backend)
        random.seed(params.seed)
        np.random.seed(params.seed)
        torch.manual_seed(params.seed)
        out = out_folder(args.out or f"models/vgg16/trial-{args.trial}-{args.modality}")

        def prepare() -> None:  # once the inputs are checked
            code_stamp(out, "finetune", ["state.pt", "model.pt", "metrics.json"])
            config.dump(out / "config.json")

        metrics = finetune(images=args.images, splits=args.splits, trial=args.trial,
                           modality=args.modality, out=out, config=params,
                           cache_dir=args.cache_dir, world=world, device=device,
                           prepare=prepare)
        if world.is_main:
            print(json.dumps(metrics, sort_keys=True))
        distributed.shutdown(world)
        return None

    return run_stage(body)
