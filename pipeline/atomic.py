"""The project's one way to write a final output: under a temporary name, renamed when whole.

A killed or failing writer leaves the old file (or nothing) at the final path, never half a
file: the temporary file lies in the same folder (a rename within one file system is atomic)
under a hidden name, and is removed when the writer fails. `check`, if given, sees the
complete temporary file before the rename, so nothing that fails validation ever reaches the
final path either.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def partial_path(path: Path) -> Path:
    """Where `path` is written before the rename (hidden; DVC and readers never take it)."""
    return path.with_name(f".{path.name}.partial")


@contextlib.contextmanager
def atomic_path(path: str | Path,
                check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` when the block succeeds.

    On an exception (or when `check(tmp)` raises) the temporary file is removed and whatever
    was at `path` is kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    tmp.unlink(missing_ok=True)  # left by a killed run
    try:
        yield tmp
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def plain(value: Any) -> Any:
    """`value` in JSON's types: tuples as lists, bytes decoded, numpy scalars and arrays as
    Python numbers and lists (what HDF5 attributes and dataclasses hold)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode()
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    return value


def write_json(path: str | Path, data: Any, *, sort_keys: bool = False) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def torch_save(obj: Any, path: str | Path) -> None:
    import torch  # imported late: most writers need no torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
