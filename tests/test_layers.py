"""The one-way layers of docs/ARCHITECTURE.md, enforced by import-linter's contracts in pyproject.toml.

``slidemap`` is one import package spread over five folders (``pyproject.toml``'s ``package-dir``), and
import-linter walks a package's own folder only; so the check runs on a copy of the sources laid out
as one folder, with the contracts read from the repository's pyproject.toml.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"compute": "compute", "training": "training", "server": "server", "dashboard": "dashboard"}


@pytest.fixture(scope="module")
def one_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("layers")
    keep = shutil.ignore_patterns("__pycache__", "static", "templates", "*.pyc")
    shutil.copytree(ROOT / "slidemap", out / "slidemap", ignore=keep)
    for name, folder in FOLDERS.items():
        shutil.copytree(ROOT / folder, out / "slidemap" / name, ignore=keep)
    return out


def lint(one_folder: Path, config: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(one_folder)}
    return subprocess.run([str(exe), "--config", str(config), "--no-cache"], cwd=one_folder, env=env,
                          capture_output=True, text=True, timeout=300)


def test_import_contracts_hold(one_folder):
    result = lint(one_folder, ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout and "KEPT" in result.stdout, result.stdout[-2000:]


def test_the_contract_catches_an_upward_import(one_folder, tmp_path):
    """A compute module that imports training breaks the contract (so the check can fail)."""
    bad = one_folder / "slidemap" / "compute" / "zz_upward.py"
    bad.write_text("from slidemap.training import lsm_networks  # noqa\n")
    try:
        result = lint(one_folder, ROOT / "pyproject.toml")
    finally:
        bad.unlink()
    assert result.returncode != 0 and "slidemap.compute.zz_upward" in result.stdout, result.stdout[-2000:]


def test_the_contract_catches_an_upward_import_inside_compute(one_folder):
    """The region layer (manifest, grid, raster I/O, build) may not reach up into the maps."""
    bad = one_folder / "slidemap" / "compute" / "region" / "zz_upward.py"
    bad.write_text("from slidemap.compute.maps import blocks  # noqa\n")
    try:
        result = lint(one_folder, ROOT / "pyproject.toml")
    finally:
        bad.unlink()
    assert result.returncode != 0 and "slidemap.compute.region.zz_upward" in result.stdout, result.stdout[-2000:]


def test_the_dashboard_may_not_read_the_region_itself(one_folder):
    """The dashboard talks to the tile server only: importing compute (the region's disk) breaks it."""
    bad = one_folder / "slidemap" / "dashboard" / "zz_disk.py"
    bad.write_text("from slidemap.compute.models import store  # noqa\n")
    try:
        result = lint(one_folder, ROOT / "pyproject.toml")
    finally:
        bad.unlink()
    assert result.returncode != 0 and "slidemap.dashboard.zz_disk" in result.stdout, result.stdout[-2000:]
