"""OGC API - Tiles (Part 1: core, tileset, tilesets-list, geodata tilesets) over the same layers
and tiles as the XYZ routes.

Each layer is a *collection*; its id is the layer id with ``/`` written as ``.`` (``factors.slope``,
``susceptibility.classes``), because OGC collection ids are one path segment. Each collection offers a
map tileset in every tile matrix set the server supports that holds the region; the tiles are the
XYZ routes' own (the same cache, ETags and model choice with ``?model=``), addressed in OGC order
``{tileMatrix}/{tileRow}/{tileCol}``. A router factory like :mod:`slidemap.server.reference`, so a test
mounts it on a bare app with a fake catalogue and service.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path as PathParam, Query, Request
from fastapi.responses import Response

from slidemap.server.errors import LayerNotFound, NotFound, error_responses
from slidemap.server.tiles import FORMATS, SUPPORTED_TMS, check_holds, get_tms, wgs84_bounds

CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-common-2/1.0/conf/collections",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tileset",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tilesets-list",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/geodata-tilesets",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/png",
]
REL = "http://www.opengis.net/def/rel/ogc/1.0/"
CollectionId = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_.\-]{1,80}$", description="a layer id with / as .")]


def collection_id(layer_id: str) -> str:
    return layer_id.replace("/", ".")


def router(public_base: Callable[[Request], str], registry: Any, service: Any,
           run_tile: Callable[..., Any]) -> APIRouter:
    """``run_tile(request, layer_id, tms_id, z, x, y, fmt, model)`` answers one tile (the XYZ route's
    own path: cache, cancellation, ETag)."""
    api = APIRouter(tags=["OGC API - Tiles"])

    def layer_of(cid: str) -> Any:
        for layer in registry.layers.values():
            if collection_id(layer.id) == cid:
                return layer
        raise LayerNotFound(f"no collection {cid!r}; see /collections")

    def collection(request: Request, layer: Any) -> dict[str, Any]:
        base, cid = public_base(request), collection_id(layer.id)
        out: dict[str, Any] = {
            "id": cid, "title": layer.title, "description": layer.description,
            "links": [
                {"href": f"{base}/collections/{cid}", "rel": "self", "type": "application/json"},
                {"href": f"{base}/collections/{cid}/tiles", "rel": f"{REL}tilesets-map", "type": "application/json",
                 "title": "map tilesets"},
            ],
        }
        try:
            out["extent"] = {"spatial": {"bbox": [list(wgs84_bounds(registry.grid_of(layer)))],
                                         "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"}}
        except Exception:  # noqa: BLE001 - an unreadable input: the collection is still listed, without extent
            pass
        return out

    def tileset(request: Request, layer: Any, tms_id: str) -> dict[str, Any]:
        base, cid = public_base(request), collection_id(layer.id)
        tms = get_tms(tms_id)
        check_holds(registry, layer, tms)  # 404 for a set that does not hold the region
        return {
            "title": f"{layer.title} ({tms_id})", "dataType": "map", "crs": str(tms.crs.root),
            "tileMatrixSetURI": tms.uri or f"{base}/tileMatrixSets/{tms_id}",
            "links": [
                {"href": f"{base}/collections/{cid}/tiles/{tms_id}", "rel": "self", "type": "application/json"},
                {"href": f"{base}/tileMatrixSets/{tms_id}", "rel": f"{REL}tiling-scheme", "type": "application/json"},
                {"href": f"{base}/collections/{cid}/tiles/{tms_id}/{{tileMatrix}}/{{tileRow}}/{{tileCol}}?f=png",
                 "rel": "item", "type": "image/png", "templated": True},
            ],
        }

    @api.get("/conformance", responses=error_responses(400))
    def conformance() -> dict[str, Any]:
        """The OGC API conformance classes this server implements."""
        return {"conformsTo": CONFORMANCE}

    @api.get("/collections", responses=error_responses(400))
    def collections(request: Request) -> dict[str, Any]:
        """Every layer as an OGC API collection with map tilesets."""
        base = public_base(request)
        return {"links": [{"href": f"{base}/collections", "rel": "self", "type": "application/json"}],
                "collections": [collection(request, layer) for layer in registry.layers.values()]}

    @api.get("/collections/{collectionId}", responses=error_responses(400, 404))
    def one_collection(request: Request, collectionId: CollectionId) -> dict[str, Any]:
        return collection(request, layer_of(collectionId))

    @api.get("/collections/{collectionId}/tiles", responses=error_responses(400, 404))
    def tilesets(request: Request, collectionId: CollectionId) -> dict[str, Any]:
        layer = layer_of(collectionId)
        sets = []
        for t in SUPPORTED_TMS:
            try:
                sets.append(tileset(request, layer, t))
            except NotFound:  # only the sets that hold the region are offered
                continue
        return {"tilesets": sets}

    @api.get("/collections/{collectionId}/tiles/{tileMatrixSetId}", responses=error_responses(400, 404))
    def one_tileset(request: Request, collectionId: CollectionId,
                    tileMatrixSetId: Annotated[Literal[SUPPORTED_TMS], PathParam()]) -> dict[str, Any]:  # type: ignore[valid-type]
        return tileset(request, layer_of(collectionId), tileMatrixSetId)

    @api.get("/collections/{collectionId}/tiles/{tileMatrixSetId}/{tileMatrix}/{tileRow}/{tileCol}",
             response_class=Response,
             responses={200: {"content": {m: {} for m in FORMATS.values()}}, **error_responses(400, 404, 409, 422, 503)})
    async def tile(
        request: Request,
        collectionId: CollectionId,
        tileMatrixSetId: Annotated[Literal[SUPPORTED_TMS], PathParam()],  # type: ignore[valid-type]
        tileMatrix: Annotated[int, PathParam(ge=0, le=30)],
        tileRow: Annotated[int, PathParam(ge=0, le=2**30)],
        tileCol: Annotated[int, PathParam(ge=0, le=2**30)],
        f: Annotated[Literal["png", "webp", "tif", "npy"], Query(description="tile format")] = "png",
        model: Annotated[str | None, Query(max_length=80, pattern=r"^[A-Za-z0-9_.\-]+$")] = None,
    ) -> Response:
        """One map tile, addressed in OGC order (row = y, col = x)."""
        layer = layer_of(collectionId)
        return await run_tile(request, layer.id, tileMatrixSetId, tileMatrix, tileCol, tileRow, f, model)

    return api
