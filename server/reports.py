"""The region's training and inventory reports over HTTP: a list, each report's JSON, its figures.

``GET /reports`` lists ``REGION/reports/<kind>/<run_id>/report.json`` (newest first);
``GET /reports/{kind}/{run_id}`` answers the report itself and ``GET /reports/{kind}/{run_id}/{file}``
one of its files (figures, the Markdown version). So a client -- the dashboard on another machine, a
notebook -- reads the evidence behind the maps without the region's disk. A router factory like
:mod:`slidemap.server.ogc_tiles`: a test mounts it on a bare FastAPI app over any folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Path as PathParam, Request
from fastapi.responses import FileResponse

from slidemap.compute.region.layout import RegionLayout
from slidemap.report_schema import ReportEntry, ReportsResponse
from slidemap.server.errors import NotFound, error_responses
from slidemap.server.files import file_answer

REPORT_FILE = "report.json"
MEDIA_TYPES = {".json": "application/json", ".md": "text/markdown; charset=utf-8", ".png": "image/png"}
MAX_LISTED = 500  # newest first; a region with more runs lists these
Kind = Annotated[str, PathParam(pattern=r"^[a-z]{1,32}$", description="report kind: unet, lsm or inventory")]
RunId = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_.\-]{1,80}$", description="the run id (its folder name)")]
FileName = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}\.(png|md|json)$",
                                    description="a file of the report folder: .png, .md or .json")]


def report_folder(root: Path, kind: str, run_id: str) -> Path:
    folder = root / kind / run_id
    if not (folder / REPORT_FILE).is_file():
        raise NotFound(f"no report {kind}/{run_id}; see /reports")
    return folder


def list_reports(root: Path) -> ReportsResponse:
    """The reports under ``root`` (a region's ``reports/``), newest first by run id."""
    found = sorted(root.glob(f"*/*/{REPORT_FILE}"), key=lambda p: p.parent.name, reverse=True) if root.is_dir() else []
    entries = []
    for path in found[:MAX_LISTED]:
        kind, run_id = path.parent.parent.name, path.parent.name
        meta: dict[str, Any] = {}
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # listed all the same: its own route answers what is wrong
            pass
        synthetic = meta.get("synthetic") if isinstance(meta, dict) else None
        files = sorted(p.name for p in path.parent.iterdir()
                       if p.is_file() and p.suffix in MEDIA_TYPES and p.name != REPORT_FILE)
        entries.append(ReportEntry(
            kind=kind, run_id=run_id, synthetic=synthetic if isinstance(synthetic, bool) else None,
            created=str(meta.get("created")) if isinstance(meta, dict) and meta.get("created") else None,
            href=f"/reports/{kind}/{run_id}", files=files))
    return ReportsResponse(reports=entries, truncated=len(found) > MAX_LISTED)


def report_file_path(root: Path, kind: str, run_id: str, name: str) -> Path:
    folder = report_folder(root, kind, run_id)
    path = folder / name
    # the name pattern has no separators; a link leading out of the folder is refused too
    if not path.is_file() or path.resolve().parent != folder.resolve():
        raise NotFound(f"no file {name} in report {kind}/{run_id}; /reports lists its files")
    return path


def router(region_dir: str | Path) -> APIRouter:
    root = RegionLayout.of(region_dir).reports
    api = APIRouter(tags=["Reports"])

    @api.get("/reports", response_model=ReportsResponse, responses=error_responses(400))
    def reports() -> ReportsResponse:
        """Every report of the region, newest first (by run id, which starts with the UTC time)."""
        return list_reports(root)

    @api.get("/reports/{kind}/{run_id}", responses={200: {"content": {"application/json": {}}},
                                                   **error_responses(400, 404, 409)})
    def report(request: Request, kind: Kind, run_id: RunId) -> FileResponse:
        """One report as its trainer wrote it (report.json)."""
        return file_answer(request, report_folder(root, kind, run_id) / REPORT_FILE, MEDIA_TYPES[".json"])

    @api.get("/reports/{kind}/{run_id}/{name}", responses={200: {"content": {"image/png": {}, "text/markdown": {}}},
                                                          **error_responses(400, 404)})
    def report_file(request: Request, kind: Kind, run_id: RunId, name: FileName) -> FileResponse:
        """A file of a report's folder: a figure (.png), the Markdown report (.md) or other JSON."""
        path = report_file_path(root, kind, run_id, name)
        return file_answer(request, path, MEDIA_TYPES[path.suffix])

    return api
