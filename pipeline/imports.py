"""Which of the project's source files a stage runs: its import closure within `pipeline`.

A stage runs as `python -m pipeline STAGE`, i.e. `pipeline/__main__.py`, which imports
`pipeline.stages` and then `pipeline.stages.STAGE`. Following every `import pipeline...` and
`from pipeline... import ...` statement from there (read with `ast`, so imports inside
functions count too, without running anything) gives the files whose edits can change what
the stage does. Importing `pipeline.a.b` runs `pipeline/__init__.py` and `pipeline/a/__init__.py`
first, so those belong to it as well.

A model registry (`pipeline/vae/__init__.py`'s `MODELS`) imports every model's module, but
training one model runs only its own: `closure("train", model="sdgm")` leaves out the modules
whose names only other models' entries use, so that each `train_<model>` stage of dvc.yaml
depends on its model's files alone (a comment in `sdgm.py` re-trains SDGM only).

Three things use it: `dvc.yaml`'s code deps must equal it (tests/test_dvc_deps.py;
`python -m pipeline.imports --check` lists the differences, `--write` rewrites the deps),
and the `code.sha256` stamp of resumable checkpoints hashes it
(`pipeline.stages.code_stamp`).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
import sys
from pathlib import Path

from pipeline.atomic import write_text

ROOT = Path(__file__).resolve().parents[1]  # the folder that holds `pipeline/`
PACKAGE = "pipeline"
REGISTRIES = {f"{PACKAGE}.vae": "MODELS"}  # module -> its dict of model name -> entry


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


def _model_modules(path: Path, table: str) -> dict[str, set[str]]:
    """Per model of the registry `table` in `path`: the modules imported only for entries
    of that table. A module any other code of the registry uses belongs to every model."""
    tree = ast.parse(path.read_text(), str(path))
    source: dict[str, str] = {}  # imported name -> its module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            source.update({(a.asname or a.name): node.module for a in node.names})
    table_node = next((node for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                       and isinstance(node.value, ast.Dict) and any(
                           isinstance(t, ast.Name) and t.id == table
                           for t in getattr(node, "targets", [getattr(node, "target", None)]))),
                      None)
    if table_node is None:
        raise ValueError(f"{path}: no dict literal {table} = {{...}} (pipeline.imports.REGISTRIES)")
    entries = {key.value: {source[n.id] for n in ast.walk(value)
                           if isinstance(n, ast.Name) and n.id in source}
               for key, value in zip(table_node.value.keys, table_node.value.values, strict=True)}
    shared = {source[n.id] for other in tree.body if other is not table_node
              for n in ast.walk(other) if isinstance(n, ast.Name) and n.id in source}
    return {name: mods - shared for name, mods in entries.items()}


def closure(stage: str, root: Path = ROOT, *, model: str | None = None) -> list[str]:
    """Sorted paths (relative to `root`, POSIX) of every file `python -m pipeline STAGE` runs;
    with `model`, those that training that model of a registry runs."""
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
        imported = _imported(path, module)
        if model is not None and module in REGISTRIES:
            per_model = _model_modules(path, REGISTRIES[module])
            if model not in per_model:
                raise ValueError(f"model {model!r} is not in {module}.{REGISTRIES[module]}")
            others = set().union(*per_model.values()) - per_model[model]
            imported -= others
        todo.extend(imported)
    return sorted(path.relative_to(root).as_posix() for path in seen.values())


def code_digest(stage: str, root: Path = ROOT, *, model: str | None = None) -> str:
    """sha256 over the stage's closure (for `model`: that model's, as its dvc.yaml deps):
    each file's path and bytes."""
    digest = hashlib.sha256()
    for name in closure(stage, root, model=model):
        digest.update(name.encode() + b"\0")
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


# `python -m pipeline MODULE ...` and `--model NAME` in a dvc.yaml stage's command
_COMMAND = re.compile(r"python -m pipeline (\w+)")
_MODEL = re.compile(r"--model (\w+)")


def stage_code(body: dict) -> tuple[str, str | None]:
    """(command, model or None) that a dvc.yaml stage runs; a templated model is None."""
    cmd = " ".join(str(body.get("do", body)["cmd"]).split())
    command = _COMMAND.search(cmd)
    if command is None:
        raise ValueError(f"not a `python -m pipeline COMMAND` stage: {cmd!r}")
    model = _MODEL.search(cmd)
    return command.group(1), model.group(1) if model else None


def expected_deps(body: dict, root: Path = ROOT) -> list[str]:
    """The code deps a dvc.yaml stage must list: its command's (and model's) closure."""
    command, model = stage_code(body)
    return closure(command, root, model=model)


def listed_deps(body: dict) -> list[str]:
    return [d for d in body.get("do", body).get("deps", []) if str(d).startswith(PACKAGE + "/")]


def differences(dvc_yaml: Path) -> dict[str, tuple[list[str], list[str]]]:
    """stage -> (deps to add, deps to remove), for every stage whose code deps are wrong."""
    import yaml

    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    found = {}
    for name, body in stages.items():
        want, have = expected_deps(body, dvc_yaml.parent), listed_deps(body)
        add, remove = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        if add or remove:
            found[name] = (add, remove)
    return found


def write_deps(dvc_yaml: Path) -> list[str]:
    """Rewrite each stage's run of `- pipeline/...` deps lines to its closure, keeping every
    other line (comments, order) as it is; returns the stages changed."""
    import yaml

    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    lines = dvc_yaml.read_text().splitlines(keepends=True)
    out, stage, changed, i = [], None, [], 0
    while i < len(lines):
        line = lines[i]
        if re.match(r"^  [\w-]+:\s*$", line):
            stage = line.strip()[:-1]
        match = re.match(r"^(\s+)- pipeline/", line)
        if match and stage in stages:
            indent, run = match.group(1), []
            while i < len(lines) and re.match(rf"^{indent}- pipeline/", lines[i]):
                run.append(lines[i])
                i += 1
            want = [f"{indent}- {d}\n" for d in expected_deps(stages[stage], dvc_yaml.parent)]
            changed += [stage] if want != run else []
            out += want
            continue
        out.append(line)
        i += 1
    write_text(dvc_yaml, "".join(out))
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.imports",
                                     description="check or rewrite dvc.yaml's code deps")
    parser.add_argument("--write", action="store_true", help="rewrite them (default: check)")
    parser.add_argument("--dvc-yaml", type=Path, default=ROOT / "dvc.yaml")
    args = parser.parse_args(argv)
    if args.write:
        print(f"{args.dvc_yaml}: rewrote the code deps of {write_deps(args.dvc_yaml) or 'none'}")
        return 0
    wrong = differences(args.dvc_yaml)
    for stage, (add, remove) in wrong.items():
        print(f"{args.dvc_yaml}: stages.{stage}.deps: add {add or 'nothing'}, "
              f"remove {remove or 'nothing'}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
