"""The suite's rule for CI, as a pytest plugin (``tests/conftest.py`` uses it; ``-p ci_rules`` loads it
elsewhere): with ``SLIDEMAP_CI=1`` (set by ``.ci/run``) a skipped test is a failure.

Tests skip only for truly optional externals -- Debian's chromium, gdal-bin's ``gdalinfo``, the real
data in ``../shared`` -- and CI must have all of them, so a skip there means CI lost something and
would otherwise pass by testing less. Tests marked ``gpu`` still skip (CI has no GPU); xfails are
left alone.
"""

from __future__ import annotations

import os

import pytest


def ci_mode() -> bool:
    return os.environ.get("SLIDEMAP_CI", "").strip() not in ("", "0", "false", "no")


def _reason(longrepr: object) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and ci_mode()) or hasattr(report, "wasxfail") or item.get_closest_marker("gpu"):
        return
    report.outcome = "failed"
    report.longrepr = (f"SLIDEMAP_CI=1: skipped tests fail in CI, which must have every optional external "
                       f"(chromium, gdal-bin, ../shared data). Skip reason: {_reason(report.longrepr)}")
