"""slidemap dashboard: the tile server's map beside the saved metric reports.

Run with ``slidemap dashboard [REGION_DIR] [--server URL]``; the command passes its arguments in the
environment: ``SLIDEMAP_SERVER``, ``SLIDEMAP_REGION`` and ``SLIDEMAP_REPORTS`` (extra report folders,
``os.pathsep``-separated). The page never recomputes anything and reads the region only through the
tile server (layers, point values, models, reports and their figures, downloads: see
:mod:`slidemap.dashboard.client`), so it runs on any machine that reaches the server. The region
folder, when given, is read only while the server cannot list the reports.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import streamlit as st

from slidemap.dashboard import map as map_page
from slidemap.dashboard import client, downloads, evidence, paper, reports

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
ROLE_OF = {"unet": "detection", "lsm": "susceptibility"}  # the server's /models names roles


def _settings() -> tuple[Path | None, str, list[Path]]:
    region = os.environ.get("SLIDEMAP_REGION", "").strip()
    server = os.environ.get("SLIDEMAP_SERVER", "").strip() or DEFAULT_SERVER
    extra = [Path(p) for p in os.environ.get("SLIDEMAP_REPORTS", "").split(os.pathsep) if p.strip()]
    return (Path(region) if region else None), server.rstrip("/"), extra


def _version_selector(models: dict | None) -> dict[str, str]:
    """Sidebar choice of model versions (from the server's ``/models``); '' means the server's default."""
    versions: dict[str, str] = {}
    st.sidebar.subheader("Model versions")
    roles = (models or {}).get("roles") if isinstance(models, dict) else None
    if not isinstance(roles, dict) or not any(isinstance(r, dict) and r.get("models") for r in roles.values()):
        st.sidebar.caption("No trained models listed by the server; its defaults are shown.")
        return versions
    for kind, label in MODEL_KINDS.items():
        entries = [m for m in (roles.get(ROLE_OF[kind]) or {}).get("models") or [] if isinstance(m, dict) and m.get("version")]
        if not entries:
            continue
        names = {m["version"]: f"{m.get('name', '')} {m['version']} ({str(m.get('created') or '')[:16]})" for m in entries}
        options = [""] + list(names)
        versions[kind] = st.sidebar.selectbox(
            label, options, format_func=lambda v, names=names: names.get(v, "server default"), key=f"version_{kind}"
        )
    return versions


def _server_badge(server: str) -> None:
    try:
        client.get_json(f"{server}/health", timeout=2.0)
    except client.ServerUnavailable:
        st.sidebar.error(f"Tile server down: {server}")
    except client.ServerFailed as exc:
        st.sidebar.warning(f"Tile server unhealthy: {exc}")
    else:
        st.sidebar.success(f"Tile server up: {server}")


def main() -> None:
    st.set_page_config(page_title="slidemap", layout="wide")
    region, server, extra = _settings()
    st.sidebar.title("slidemap")
    page = st.sidebar.radio("Page", PAGES, key="page")
    st.sidebar.caption(f"Tile server: {server}" + (f" · region folder: {region}" if region else ""))
    _server_badge(server)
    models = evidence.fetch_models(server)
    versions = _version_selector(models)

    if region is not None and not region.is_dir():
        st.error(f"{region}: no such region folder; give `slidemap dashboard` an existing REGION_DIR or none.")
        region = None
    if page == "Downloads":
        downloads.render(server)
        return
    found, note = reports.region_reports(server, region, extra)
    if note:
        st.caption(note)
    if page == "Map":
        map_page.render(server, versions, evidence=lambda: evidence.render(models, reports.for_versions(found, versions)))
        return
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
