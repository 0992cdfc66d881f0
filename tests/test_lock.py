"""requirements.lock covers pyproject.toml, pins every file by hash, and is what is installed."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^([A-Za-z0-9._-]+)==([^\s]+) --hash=sha256:[0-9a-f]{64}$")


def locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = LINE.match(line)
        assert match, f"requirements.lock: {line!r} is not `name==version --hash=sha256:...`"
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def test_every_dependency_of_pyproject_is_locked_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked()
    for text in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not locked: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={pins[name]} outside {text!r}: run `make lock`")


def test_the_environment_is_the_lock():
    for name, version in locked().items():
        try:
            found = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found = None
        assert found == version, (f"{name}: requirements.lock pins {version}, the environment "
                                  f"has {found}; run `make setup`")
