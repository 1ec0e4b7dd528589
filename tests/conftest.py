"""Shared fixtures: a small SYNTHETIC demo region, generated and prepared once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is not here (CI has ../shared beside the clone)")
    return path


@pytest.fixture(scope="session")
def demo_region_source(tmp_path_factory) -> Path:
    """A 3 km SYNTHETIC demo region (seed 0) as generated; do not modify it."""
    from slidemap.compute.demo import generate_demo_region

    out = tmp_path_factory.mktemp("demo") / "region"
    generate_demo_region(out, size_km=3.0, seed=0)
    return out


@pytest.fixture(scope="session")
def prepared_region(demo_region_source, tmp_path_factory) -> Path:
    """The 3 km demo region, prepared. Shared read-only: copy it before changing inputs."""
    from slidemap.compute.prepare import prepare_region

    out = tmp_path_factory.mktemp("prepared") / "region"
    shutil.copytree(demo_region_source, out)
    prepare_region(out, show_progress=False)
    return out


@pytest.fixture
def region_copy(prepared_region, tmp_path) -> Path:
    """A private copy of the prepared region (build folder included) a test may change."""
    out = tmp_path / "region"
    shutil.copytree(prepared_region, out)
    return out
