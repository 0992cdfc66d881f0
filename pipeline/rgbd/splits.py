"""Lai et al.'s trials and the labelled subsets of Section 4.

`testinstance_ids.txt` lists, for each trial, one held-out instance per category:

    ****** trial 1 ******
    apple_2
    ball_5
    ...

Every trial must hold out exactly one instance of each category in the data, never a
category's only instance (checked by the download stage against the archive and by the split
stage against the images file). Trial K tests on the frames of its listed instances and
trains on all other frames; of those training frames a seeded, per-category stratified
`labeled_fraction` (at least one frame per category) is labelled. The masks are stored in
`data/splits.h5` (`ssmvae-splits/1`), aligned row by row with `data/images.h5`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.rgbd.layout import split_instance
from pipeline.store import TrialSplit

_HEADER = re.compile(r"^\*+\s*trial\s+(\d+)\s*\*+$", re.IGNORECASE)


class TrialsError(UserError):
    """The trials file is malformed or does not match the data."""


def format_trials(trials: Mapping[int, Sequence[str]]) -> str:
    """The text of a `testinstance_ids.txt` in the dataset's own format."""
    blocks = [f"****** trial {t} ******\n" + "".join(f"{i}\n" for i in instances)
              for t, instances in sorted(trials.items())]
    return "\n".join(blocks)


def parse_trials(text: str, *, source: str = "testinstance_ids.txt") -> dict[int, list[str]]:
    trials: dict[int, list[str]] = {}
    current: int | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        header = _HEADER.match(line)
        if header:
            current = int(header.group(1))
            if current in trials:
                raise TrialsError(f"{source}:{number}: trial {current} appears twice")
            trials[current] = []
        elif current is None:
            raise TrialsError(f"{source}:{number}: {line!r} before the first "
                              "'****** trial N ******' header")
        else:
            trials[current].append(line)
    if not trials:
        raise TrialsError(f"{source}: no '****** trial N ******' header found")
    return trials


def read_trials(path: str | Path) -> dict[int, list[str]]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as err:
        raise TrialsError(f"{path}: trials file not found") from err
    except UnicodeDecodeError as err:
        raise TrialsError(f"{path}: not a text file ({err})") from err
    return parse_trials(text, source=str(path))


def check_trials(trials: Mapping[int, Sequence[str]], instances: Iterable[str], *,
                 source: str, data: str = "the data", wanted: Sequence[int] | None = None) -> None:
    """Each trial (of `wanted`, default all) must hold out exactly one instance of every
    category present in `instances`, leaving another instance of it to train on.

    A `TrialsError` names `source` and the first trial that breaks this.
    """
    by_category: dict[str, set[str]] = {}
    for name in instances:
        by_category.setdefault(split_instance(name)[0], set()).add(name)
    for trial in trials if wanted is None else wanted:
        held_out = list(trials[trial])
        where = f"{source}: trial {trial}"
        if not held_out:
            raise TrialsError(f"{where} lists no instance; expected one per category")
        absent = [i for i in held_out if not any(i in s for s in by_category.values())]
        if absent:
            raise TrialsError(f"{where} holds out {', '.join(absent)}, absent from {data}")
        for category, members in sorted(by_category.items()):
            chosen = [i for i in held_out if i in members]
            if len(chosen) != 1:
                raise TrialsError(f"{where} holds out {len(chosen)} instances of {category!r} "
                                  f"({', '.join(chosen) or 'none'}); expected exactly one")
            if members == set(chosen):
                raise TrialsError(f"{where} holds out {chosen[0]}, the only instance of "
                                  f"{category!r} in {data}: nothing left to train on")


def make_split(trial: int, held_out: Sequence[str], *, instance: np.ndarray, label: np.ndarray,
               labeled_fraction: float, seed: int, source: str = "trials file") -> TrialSplit:
    """One trial's masks over the frames of an images file (`instance`, `label` per row)."""
    instance = np.asarray(instance, dtype=object)
    present = set(instance.tolist())
    missing = [i for i in held_out if i not in present]
    if missing:
        raise TrialsError(f"{source}: trial {trial} holds out {', '.join(missing)}, "
                          "absent from the images file")
    is_test = np.isin(instance, list(held_out))
    is_labeled = np.zeros(len(instance), dtype=bool)
    rng = np.random.default_rng([seed, trial])
    for category in np.unique(label):
        pool = np.flatnonzero((label == category) & ~is_test)
        if pool.size == 0:
            continue  # every frame of this category is held out: nothing to label
        k = max(1, round(labeled_fraction * pool.size))
        is_labeled[rng.choice(pool, size=k, replace=False)] = True
    return TrialSplit(trial=trial, is_test=is_test, is_labeled=is_labeled,
                      test_instances=list(held_out))


def make_splits(trials: Mapping[int, Sequence[str]], wanted: Sequence[int], *,
                instance: np.ndarray, label: np.ndarray, labeled_fraction: float, seed: int,
                source: str = "trials file") -> list[TrialSplit]:
    absent = [t for t in wanted if t not in trials]
    if absent:
        raise TrialsError(f"{source}: no trial {', '.join(map(str, absent))} (split.trials); "
                          f"the file holds trials {', '.join(map(str, sorted(trials)))}")
    check_trials(trials, set(np.asarray(instance, dtype=object).tolist()), source=source,
                 data="the images file", wanted=wanted)
    return [make_split(t, trials[t], instance=instance, label=label,
                       labeled_fraction=labeled_fraction, seed=seed, source=source)
            for t in wanted]
