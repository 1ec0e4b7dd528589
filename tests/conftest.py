"""Shared fixtures and the suite's rules.

- TensorFlow is configured once, through the same entry point as the CLI
  (:func:`slidemap.compute.models.runtime.configure_tensorflow`), before any test module is imported:
  GPU memory growth is on (exported to the ``slidemap`` subprocesses the tests start), the XLA policy
  is the product's, and mixed precision is off (tolerances here are float32's).
- Tests marked ``gpu`` skip, with the reason, where TensorFlow sees no GPU.
- ``SLIDEMAP_CI=1`` (``.ci/run``): every other skip is a failure (:mod:`ci_rules`).
- Files a test wants to keep (screenshots) go to the ``output_dir`` folder: a session temporary
  folder, or ``SLIDEMAP_TEST_OUTPUT`` when set; never the repository.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")  # before TensorFlow starts, here and in children
os.environ["SLIDEMAP_MIXED_PRECISION"] = "0"

from ci_rules import pytest_runtest_makereport  # noqa: E402,F401  (the hook is registered from here)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    from slidemap.compute.models.runtime import configure_tensorflow

    configure_tensorflow()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    from slidemap.compute.models.runtime import device_info

    info = device_info()
    if info.device == "GPU":
        return
    why = (f"needs a GPU: TensorFlow {info.tensorflow} ({', '.join(info.distributions) or 'unknown build'}) "
           f"places ops on {info.placement}" + (f"; {info.warnings[0]}" if info.warnings else ""))
    for item in gpu_items:
        item.add_marker(pytest.mark.skip(reason=why))


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, or skip the test with the reason (a failure in CI)."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is not here (CI has ../shared beside the clone)")
    return path


@pytest.fixture(scope="session")
def output_dir(tmp_path_factory) -> Path:
    """Where tests put files for people to look at (screenshots): never inside the repository."""
    keep = os.environ.get("SLIDEMAP_TEST_OUTPUT", "").strip()
    if keep:
        out = Path(keep).resolve()
        out.mkdir(parents=True, exist_ok=True)
        return out
    return tmp_path_factory.mktemp("test-output")


@pytest.fixture(scope="session")
def demo_region_source(tmp_path_factory) -> Path:
    """A 3 km SYNTHETIC demo region (seed 0) as generated; do not modify it."""
    from slidemap.compute.demo.region import generate_demo_region

    out = tmp_path_factory.mktemp("demo") / "region"
    generate_demo_region(out, size_km=3.0, seed=0)
    return out


@pytest.fixture(scope="session")
def prepared_region(demo_region_source, tmp_path_factory) -> Path:
    """The 3 km demo region, prepared. Shared read-only: copy it before changing inputs."""
    from slidemap.compute.region.prepare import prepare_region

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
