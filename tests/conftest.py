"""Shared fixtures: a tiny synthetic dataset in the Washington layout, and the real frames."""

from pathlib import Path

import pytest

from pipeline.rgbd.download import extract_zip
from pipeline.rgbd.synthetic import SyntheticSpec, generate

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "washington-rgbd"
TINY = SyntheticSpec(seed=3, categories=3, instances=2, frames=1, trials=2)


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory) -> tuple[Path, Path]:
    """(archive, trials file) of 3 categories x 2 instances x 3 videos x 1 frame."""
    folder = tmp_path_factory.mktemp("synthetic")
    archive, trials = folder / "tiny.zip", folder / "testinstance_ids.txt"
    generate(TINY, archive, trials)
    return archive, trials


@pytest.fixture(scope="session")
def tiny_raw(tiny_archive, tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    extract_zip(tiny_archive[0], raw)
    return raw


@pytest.fixture
def real_frames() -> Path:
    """The two real Washington frames in /work/shared (apple/apple_1/...)."""
    if not (FIXTURES / "apple" / "apple_1").is_dir():
        pytest.skip(f"real Washington RGB-D fixtures not found at {FIXTURES}")
    return FIXTURES
