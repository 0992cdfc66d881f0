"""Which of the project's source files a stage runs: its import closure within `pipeline`.

A stage runs as `python -m pipeline STAGE`, i.e. `pipeline/__main__.py`, which imports
`pipeline.stages` and then `pipeline.stages.STAGE`. Following every `import pipeline...` and
`from pipeline... import ...` statement from there (read with `ast`, so imports inside
functions count too, without running anything) gives the files whose edits can change what
the stage does. Importing `pipeline.a.b` runs `pipeline/__init__.py` and `pipeline/a/__init__.py`
first, so those belong to it as well.

Two things use it: `dvc.yaml`'s code deps must cover it (tests/test_dvc_deps.py), and the
`code.sha256` stamp of resumable checkpoints hashes it (`pipeline.stages.code_stamp`).
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the folder that holds `pipeline/`
PACKAGE = "pipeline"


def _file_of(module: str, root: Path) -> Path | None:
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(path: Path, module: str) -> set[str]:
    """The `pipeline...` modules a file imports (a name imported from a package may be a
    submodule: both are tried)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


def closure(stage: str, root: Path = ROOT) -> list[str]:
    """Sorted paths (relative to `root`, POSIX) of every file `python -m pipeline STAGE` runs."""
    if _file_of(f"{PACKAGE}.stages.{stage}", root) is None:
        raise ValueError(f"no stage module {PACKAGE}.stages.{stage} under {root}")
    todo = [f"{PACKAGE}.__main__", f"{PACKAGE}.stages.{stage}"]
    seen: dict[str, Path] = {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = _file_of(module, root)
        if path is None:  # a name imported from a module, not a module
            continue
        seen[module] = path
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages
        todo.extend(_imported(path, module))
    return sorted(path.relative_to(root).as_posix() for path in seen.values())


def code_digest(stage: str, root: Path = ROOT) -> str:
    """sha256 over the stage's closure: each file's path and bytes."""
    digest = hashlib.sha256()
    for name in closure(stage, root):
        digest.update(name.encode() + b"\0")
        digest.update((root / name).read_bytes())
    return digest.hexdigest()
