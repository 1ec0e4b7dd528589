"""slidemap dashboard: the tile server's map beside the saved metric reports.

Run with ``slidemap dashboard REGION_DIR [--server URL]``; the command passes its arguments in the
environment: ``SLIDEMAP_REGION``, ``SLIDEMAP_SERVER`` and ``SLIDEMAP_REPORTS`` (extra report folders,
``os.pathsep``-separated). The page never recomputes anything: it asks the tile server for tiles and
point values, and reads reports that training saved.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import streamlit as st

from slidemap.dashboard import map as map_page
from slidemap.dashboard import downloads, evidence, paper, reports
from slidemap.compute.models.store import list_models

DEFAULT_SERVER = "http://127.0.0.1:8000"
PAGES = (
    "Map",
    reports.PAGE_TITLES["unet"],
    reports.PAGE_TITLES["lsm"],
    reports.PAGE_TITLES["inventory"],
    "Paper comparison",
    "Downloads",
)
MODEL_KINDS = {"unet": "Detector (U-Net) version", "lsm": "Susceptibility model version"}


def _settings() -> tuple[Path | None, str, list[Path]]:
    region = os.environ.get("SLIDEMAP_REGION", "").strip()
    server = os.environ.get("SLIDEMAP_SERVER", "").strip() or DEFAULT_SERVER
    extra = [Path(p) for p in os.environ.get("SLIDEMAP_REPORTS", "").split(os.pathsep) if p.strip()]
    return (Path(region) if region else None), server.rstrip("/"), extra


def _version_selector(region: Path | None) -> dict[str, str]:
    """Sidebar choice of model versions; '' means the server's default (its newest)."""
    versions: dict[str, str] = {}
    models = list_models(region) if region is not None and region.is_dir() else []
    st.sidebar.subheader("Model versions")
    if not models:
        st.sidebar.caption("No trained models in this region yet; the server's defaults are shown.")
    for kind, label in MODEL_KINDS.items():
        options = [""] + [m.version for m in models if m.kind == kind and m.version]
        names = {m.version: f"{m.name} {m.version} ({(m.card.get('created') or '')[:16]})" for m in models}
        if len(options) == 1:
            continue
        versions[kind] = st.sidebar.selectbox(
            label, options, format_func=lambda v, names=names: names.get(v, "server default (newest)"), key=f"version_{kind}"
        )
    return versions


def _server_badge(server: str) -> None:
    try:
        map_page.get_json(f"{server}/health", timeout=2.0)
    except map_page.ServerUnavailable:
        st.sidebar.error(f"Tile server down: {server}")
    except map_page.ServerFailed as exc:
        st.sidebar.warning(f"Tile server unhealthy: {exc}")
    else:
        st.sidebar.success(f"Tile server up: {server}")


def main() -> None:
    st.set_page_config(page_title="slidemap", layout="wide")
    region, server, extra = _settings()
    st.sidebar.title("slidemap")
    page = st.sidebar.radio("Page", PAGES, key="page")
    st.sidebar.caption(f"Region: {region or 'none given'}")
    _server_badge(server)
    versions = _version_selector(region)

    if region is not None and not region.is_dir():
        st.error(f"{region}: no such region folder; give `slidemap dashboard` an existing REGION_DIR.")
        region = None
    if page == "Map":
        map_page.render(server, versions, evidence=lambda: evidence.render(
            evidence.fetch_models(server), reports.for_versions(reports.find_reports(region, extra), versions)))
        return
    if page == "Downloads":
        downloads.render(region)
        return
    found = reports.find_reports(region, extra)
    if page == "Paper comparison":
        paper.render(reports.for_versions(found, versions))
        return
    kind = next(k for k, title in reports.PAGE_TITLES.items() if title == page)
    reports.render_kind(kind, found, versions)


try:
    main()
except Exception as exc:  # noqa: BLE001 - Streamlit's stop/rerun are BaseException; the page shows a message, the log keeps the traceback
    logging.getLogger("slidemap.dashboard").exception("dashboard page failed")
    st.error(f"The dashboard hit an unexpected error ({type(exc).__name__}: {exc}); the details are in the log.")
