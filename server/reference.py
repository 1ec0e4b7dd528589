"""Reference routes: the tile matrix sets and colormaps this server knows, bounded and offline.

titiler's ``TMSFactory`` / ``ColorMapFactory`` would serve these, but their HTML pages load
scripts from CDNs, their links are built from the request's Host header, and the colormap image
has no bound on ``width``/``height`` (one ``<img>`` could ask for a 500000-pixel legend). These
routes answer JSON, or a legend image of at most ``MAX_LEGEND_PX`` per side, with links from the
server's public base URL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import morecantile
import numpy as np
from fastapi import APIRouter, Path as PathParam, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel
from rio_tiler.colormap import cmap as default_cmap

from slidemap.server.errors import error_responses
from slidemap.server.tiles import SUPPORTED_TMS

MAX_LEGEND_PX = 1024
COLORMAP_NAMES = tuple(sorted(default_cmap.list()))
ColorMapName = Literal[COLORMAP_NAMES]  # type: ignore[valid-type]
TmsId = Literal[SUPPORTED_TMS]  # type: ignore[valid-type]


class Link(BaseModel):
    id: str
    href: str


class TileMatrixSetList(BaseModel):
    tileMatrixSets: list[Link]


class ColorMapList(BaseModel):
    colorMaps: list[Link]


def router(public_base: Callable[[Request], str]) -> APIRouter:
    api = APIRouter()

    @api.get("/tileMatrixSets", response_model=TileMatrixSetList, tags=["Tiling schemes"],
             responses=error_responses(400))
    def tile_matrix_sets(request: Request) -> dict[str, Any]:
        """The tile matrix sets tiles are served in."""
        base = public_base(request)
        return {"tileMatrixSets": [{"id": t, "href": f"{base}/tileMatrixSets/{t}"} for t in SUPPORTED_TMS]}

    @api.get("/tileMatrixSets/{tileMatrixSetId}", tags=["Tiling schemes"],
             responses=error_responses(400, 422))
    def tile_matrix_set(tileMatrixSetId: Annotated[TmsId, PathParam()]) -> dict[str, Any]:
        """One tile matrix set (OGC Two Dimensional Tile Matrix Set JSON)."""
        return morecantile.tms.get(tileMatrixSetId).model_dump(mode="json", exclude_none=True)

    @api.get("/colorMaps", response_model=ColorMapList, tags=["Colormaps"], responses=error_responses(400))
    def color_maps(request: Request) -> dict[str, Any]:
        """Colormap names ``colormap_name=`` accepts."""
        base = public_base(request)
        return {"colorMaps": [{"id": n, "href": f"{base}/colorMaps/{n}"} for n in COLORMAP_NAMES]}

    @api.get(
        "/colorMaps/{colorMapId}",
        tags=["Colormaps"],
        responses={200: {"content": {"application/json": {}, "image/png": {}}}, **error_responses(400, 422)},
        response_class=Response,
    )
    def color_map(
        colorMapId: Annotated[ColorMapName, PathParam()],
        format: Annotated[Literal["json", "png"], Query(description="json: value -> RGBA; png: a legend image")] = "json",
        width: Annotated[int, Query(ge=1, le=MAX_LEGEND_PX, description="legend image width (png)")] = 256,
        height: Annotated[int, Query(ge=1, le=MAX_LEGEND_PX, description="legend image height (png)")] = 20,
        orientation: Annotated[Literal["horizontal", "vertical"], Query()] = "horizontal",
    ) -> Response:
        """A colormap as JSON (256 entries, value -> [r, g, b, a]) or as a bounded legend image."""
        lut = default_cmap.get(colorMapId)
        if format == "json":
            import json

            return Response(json.dumps({str(k): [int(c) for c in v] for k, v in lut.items()}), media_type="application/json")
        from rio_tiler.utils import render

        length = width if orientation == "horizontal" else height
        ramp = np.round(np.linspace(0, 255, num=length)).astype(np.uint8)
        img = np.broadcast_to(ramp[np.newaxis, :], (height, width)) if orientation == "horizontal" \
            else np.broadcast_to(ramp[:, np.newaxis], (height, width))
        content = render(np.ascontiguousarray(img)[np.newaxis], colormap=lut, img_format="PNG")
        return Response(content, media_type="image/png")

    return api
