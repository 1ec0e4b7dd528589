"""The region's outputs over HTTP: ``GET /downloads`` lists them, ``GET /downloads/{path}`` sends one.

Only files that slidemap's commands wrote are offered, found by where those commands put them
(README: "Where outputs land"): maps with their styles and class tables, the known and the detected
inventories, tile archives kept in the region, reports. The tile cache, the region's inputs and
anything else under the folder are never listed, and a path is sent only if the listing holds it,
so no request can reach another file. A router factory like :mod:`slidemap.server.reports`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Path as PathParam, Request
from fastapi.responses import FileResponse

from slidemap.compute.region.layout import OUTPUT_PATTERNS
from slidemap.report_schema import Output, OutputsResponse
from slidemap.server.errors import NotFound, error_responses
from slidemap.server.files import file_answer

MEDIA_TYPES = {
    ".tif": "image/tiff; application=geotiff", ".gpkg": "application/geopackage+sqlite3", ".json": "application/json",
    ".md": "text/markdown; charset=utf-8", ".qml": "application/xml", ".sld": "application/vnd.ogc.sld+xml",
    ".mbtiles": "application/vnd.sqlite3", ".pmtiles": "application/vnd.pmtiles", ".xml": "application/xml",
}
RelPath = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]{0,300}$",
                                   description="an output's path in the region, as GET /downloads lists it")]


def region_outputs(region: Path) -> list[Output]:
    """The region's outputs, grouped, newest first within a group; each file once."""
    seen: set[Path] = set()
    out: list[Output] = []
    for group, pattern, what in OUTPUT_PATTERNS:
        found = []
        for path in region.glob(pattern):
            try:
                if path.is_file() and not path.is_symlink() and not path.name.startswith("."):
                    found.append((path.stat(), path))
            except OSError:  # gone between the glob and the stat: not an output any more
                continue
        for stat, path in sorted(found, key=lambda item: item[0].st_mtime, reverse=True):
            if path not in seen:
                seen.add(path)
                rel = path.relative_to(region).as_posix()
                out.append(Output(group=group, path=rel, what=what, size=stat.st_size, modified=stat.st_mtime,
                                  href=f"/downloads/{rel}"))
    return out


def router(region_dir: str | Path) -> APIRouter:
    region = Path(region_dir)
    api = APIRouter(tags=["Data"])

    @api.get("/downloads", response_model=OutputsResponse, responses=error_responses(400))
    def list_outputs() -> OutputsResponse:
        """Every output slidemap wrote in the region (maps, styles, inventories, tile archives,
        reports), each with its size and its URL."""
        return OutputsResponse(outputs=region_outputs(region))

    @api.get("/downloads/{path:path}", responses={200: {"content": {t: {} for t in sorted(set(MEDIA_TYPES.values()))}},
                                                 **error_responses(400, 404, 416)})
    def download(request: Request, path: RelPath) -> FileResponse:
        """One output, streamed (only a path that GET /downloads lists)."""
        listed = {o.path for o in region_outputs(region)}
        if path not in listed:
            raise NotFound(f"no output {path} in this region; GET /downloads lists them")
        file = region / path
        suffix = ".xml" if file.name.endswith(".aux.xml") else file.suffix
        return file_answer(request, file, MEDIA_TYPES.get(suffix, "application/octet-stream"), file.name)

    return api
