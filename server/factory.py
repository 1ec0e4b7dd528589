"""The tile server's endpoints as a factory: ``TileServerFactory(service=...).router``.

Built the way titiler builds its apps (``titiler.core.factory``): an attrs class holding what the
endpoints share (the tile service, settings, the device probe), whose ``register_routes()`` adds each
group of routes to one ``APIRouter``. :func:`slidemap.server.app.create_app` mounts the router with the
middleware, error handlers and static files; a test mounts it on a bare FastAPI app. Query parameters
that several routes take are declared once: :data:`ModelSpec` and the :class:`RenderQuery` dependency.
"""

# No `from __future__ import annotations` here: route parameters are annotated with values of
# this server's settings (max scale, tile name pattern), which FastAPI must see evaluated.
import asyncio
import math
import threading
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import attrs
import numpy as np
import rasterio
from fastapi import APIRouter, Depends, Path as PathParam, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import Field
from starlette.requests import ClientDisconnect
from titiler.core.models.mapbox import TileJSON

from slidemap.compute import provenance
from slidemap.compute.models.select import ROLES, has_skill, score_of, skill_note, skill_of
from slidemap.errors import SlidemapError
from slidemap.server import errors as server_errors
from slidemap.server.errors import Scrubber, error_responses
from slidemap.server.layers import Layer
from slidemap.server.reference import ColorMapName, router as reference_router
from slidemap.server.responses import (
    HealthResponse,
    LayersResponse,
    ModelsResponse,
    PointResponse,
)
from slidemap.server.background import DeviceProbe, run_cancellable
from slidemap.server.service import ServerSettings
from slidemap.server.tiles import TileService
from slidemap.server.tiles import (
    FORMATS,
    SUPPORTED_TMS,
    RenderParams,
    data_tag,
    get_tms,
    lonlat_to,
    parse_rescale,
    wgs84_bounds,
    zoom_range,
)
from slidemap.server.wmts import capabilities

MODEL_SPEC = r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$"  # a model name or a version (prefix); never a path
DATA_TAG = r"^[0-9a-f]{16}$"
RESCALE = r"^-?[0-9]{1,15}(\.[0-9]{1,15})?,-?[0-9]{1,15}(\.[0-9]{1,15})?$"
MODEL_HELP = "model name (its newest version) or version (hash or a prefix of 6+); default: the region's default; ignored by file-backed layers"
RESCALE_HELP = ("min,max mapped to the colour ramp (max < min reverses it, min == max draws a step); once per band "
                "or once for all; ignored by categorical layers")
COLORMAP_HELP = "colormap name (GET /colorMaps); ignored by RGB and categorical layers"
MAX_FEATURE_BYTES = 1 << 20  # a polygon of tens of thousands of vertices; more is not a map request
BODY_STALL_S = 20.0  # a body whose next part takes longer is abandoned (408), not waited for


async def read_body(request: Request, limit: int, what: str, stall_s: float = BODY_STALL_S) -> bytes:
    """The request body, at most ``limit`` bytes whatever Content-Length says, each part arriving
    within ``stall_s`` of the last; a client that leaves mid-upload is :class:`ClientGone`."""
    raw = bytearray()
    parts = request.stream().__aiter__()
    while True:
        try:
            part = await asyncio.wait_for(parts.__anext__(), stall_s)
        except StopAsyncIteration:
            return bytes(raw)
        except TimeoutError:
            raise server_errors.StalledBody(f"{what} stopped arriving for {stall_s:.0f} s; send it whole") from None
        except ClientDisconnect:
            raise server_errors.ClientGone(f"the client left before {what} arrived") from None
        raw += part
        if len(raw) > limit:
            raise server_errors.OverBudget(f"{what} is larger than {limit} bytes; simplify the polygon")

ModelSpec = Annotated[str | None, Query(pattern=MODEL_SPEC, description=MODEL_HELP)]


@dataclass
class RenderQuery:
    """What a rendered layer is drawn from and how: ``?model=``, ``?rescale=`` and ``?colormap_name=``
    (titiler's names), one dependency for the tile, TileJSON and WMTS routes."""

    model: ModelSpec = None
    rescale: Annotated[list[Annotated[str, Field(pattern=RESCALE)]] | None,
                       Query(max_length=4, description=RESCALE_HELP)] = None
    colormap_name: Annotated[ColorMapName | None, Query(description=COLORMAP_HELP)] = None

    def params(self) -> RenderParams:
        return RenderParams(parse_rescale(self.rescale), self.colormap_name)


Render = Annotated[RenderQuery, Depends()]


def tile_query(info, data_version: str, params: RenderParams) -> list[tuple[str, str]]:
    """Query of tile URLs: the model and data they pin, and the render parameters that apply."""
    q: list[tuple[str, str]] = []
    if info is not None:
        q.append(("model", info.version))
    q.append(("v", data_tag(data_version)))
    for lo, hi in params.rescale or ():
        q.append(("rescale", f"{lo:g},{hi:g}"))
    if params.colormap_name:
        q.append(("colormap_name", params.colormap_name))
    return q


@attrs.define(kw_only=True)
class TileServerFactory:
    """Every endpoint of the tile server over one :class:`TileService`."""

    service: TileService
    settings: ServerSettings = attrs.field(factory=ServerSettings)
    device: DeviceProbe = attrs.field(factory=DeviceProbe)
    templates: Any = None  # Jinja2Templates for the map page; None: no map page
    router: APIRouter = attrs.field(factory=APIRouter)
    scrub: Scrubber = attrs.field(init=False)
    public_url: str | None = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        registry = self.service.registry
        self.scrub = Scrubber(registry.region_dir, registry.cache_dir)
        self.public_url = self.settings.public_url.rstrip("/") if self.settings.public_url else None
        self.register_routes()

    @property
    def registry(self):
        return self.service.registry

    def register_routes(self) -> None:
        """Every group of routes, in the order the API docs list them."""
        from slidemap.server.downloads import router as downloads_router
        from slidemap.server.ogc_tiles import router as ogc_tiles_router
        from slidemap.server.reports import router as reports_router

        self.router.include_router(reference_router(self.base))
        self.service_routes()
        self.layer_routes()
        self.data_routes()
        self.tile_routes()
        self.router.include_router(reports_router(self.registry.region_dir))
        self.router.include_router(downloads_router(self.registry.region_dir))
        self.router.include_router(ogc_tiles_router(
            self.base, self.registry, self.service,
            lambda request, lid, tms_id, z, x, y, fmt, model: self.answer_tile(
                request, lid, tms_id, z, x, y, 1, fmt, RenderParams(), model, None)))
        self.wmts_routes()
        self.point_routes()
        self.inventory_routes()
        if self.templates is not None:
            self.page_routes()

    # ---- what several routes share -------------------------------------------------------------
    def base(self, request: Request) -> str:
        if self.public_url:
            return self.public_url
        host = request.headers.get("host", "127.0.0.1")  # checked by RequestPolicy
        return f"{request.url.scheme}://{host}{request.scope.get('root_path', '')}"

    def model_fields(self, layer: Layer, spec: str | None) -> dict[str, Any]:
        """Which model a computed layer shows, its skill, and a title that says so."""
        registry, scrub = self.registry, self.scrub
        out: dict[str, Any] = {"models": [m.version for m in registry.models(layer.model_kind or "")]}
        try:
            info = registry.model_info(layer, spec)
        except SlidemapError as exc:
            out.update(model=None, available=False, problem=scrub(str(exc)),
                       has_skill=False if out["models"] else None)
            if out["models"]:
                out["title"] = f"{layer.title} - NO SKILL: no {layer.role} model has skill; pick one with ?model="
            return out
        note = skill_note(info.card)
        out.update(model=info.version, model_name=info.name, skill=note, has_skill=has_skill(info.card),
                   title=f"{layer.title} - {info.name}, {note}", info=info)
        return out

    def layer_entry(self, request: Request, layer: Layer, catalog) -> dict[str, Any]:
        registry, service, scrub = self.registry, self.service, self.scrub
        b = self.base(request)
        entry: dict[str, Any] = {
            "id": layer.id, "title": layer.title, "kind": layer.kind, "units": layer.units,
            "categorical": bool(layer.categorical),
            "description": layer.description, "synthetic": registry.synthetic, "computed": layer.computed,
            "formats": list(FORMATS), "available": True, "problem": None,
            "tilejson": f"{b}/layers/{layer.id}/WebMercatorQuad/tilejson.json",
            "wmts": f"{b}/layers/{layer.id}/WMTSCapabilities.xml",
            "legend": f"{b}/layers/{layer.id}/legend",
        }
        info = None
        if layer.computed:
            fields = self.model_fields(layer, None)
            info = fields.pop("info", None)
            entry.update(fields)
        try:
            tms = get_tms("WebMercatorQuad")
            minzoom, maxzoom = zoom_range(registry, layer, tms, catalog)
            entry.update(minzoom=minzoom, maxzoom=maxzoom, bounds=list(wgs84_bounds(registry.grid_of(layer, catalog))))
            if entry["available"]:
                _, dv = service.resolve(layer, info.version if info else None, catalog)
                q = [("model", info.version)] if info else []
                q.append(("v", data_tag(dv)))
                entry["tiles"] = f"{b}/layers/{layer.id}/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.png?{urlencode(q)}"
        except SlidemapError as exc:
            entry.update(available=False, problem=scrub(str(exc)))
        return entry

    async def answer_tile(self, request: Request, layer_id: str, tms_id: str, z: int, x: int, y: int, scale: int,
                          fmt: str, params: RenderParams, model: str | None, v: str | None) -> Response:
        """One tile through the service (cache, single flight, cancellation), with its ETag and
        conditional answer: the XYZ and the OGC API routes both end here."""
        service = self.service
        result = await run_cancellable(
            request, lambda cancel: service.tile(layer_id, tms_id, z, x, y, scale, fmt, params, model, v, cancel))
        headers = {"ETag": result.etag, "Cache-Control": result.cache_control, **result.headers}
        if self.registry.synthetic:
            headers["X-Slidemap-Synthetic"] = "true"  # tiles of generated, not observed, data
        inm = request.headers.get("if-none-match")
        if inm and (inm.strip() == "*" or result.etag in [t.strip() for t in inm.split(",")]):
            return Response(status_code=304, headers=headers)
        return Response(result.content, media_type=result.media_type, headers=headers)

    def point_values(self, lon: float, lat: float, chosen: dict[str, str | None], cancel: threading.Event) -> dict[str, Any]:
        """What ``/point`` answers (in a worker thread; ``cancel`` drops queued model work)."""
        registry, service, scrub = self.registry, self.service, self.scrub
        catalog = registry.refresh()
        out: dict[str, Any] = {"lon": lon, "lat": lat, "inside": False, "synthetic": catalog.synthetic,
                               "factors": {}, "factor_classes": {}, "units": {}, "notes": {}}
        factors = catalog.inputs.get("factors")
        if factors is not None:
            for layer in catalog.layers.values():
                if layer.kind == "factor":
                    out["units"][layer.id.split("/", 1)[1]] = layer.units
            if factors.ok and factors.grid is not None:
                grid = factors.grid
                xy = lonlat_to(grid.crs, lon, lat)  # None: outside what the analysis CRS can represent
                rows, cols = grid.rowcol(np.array([xy[0]]), np.array([xy[1]])) if xy else (np.array([-1]), np.array([-1]))
                inside = bool(grid.contains(rows, cols)[0])
                out["inside"] = inside
                out["factors"] = {name: None for name in factors.bands}
                if inside:
                    r, c = int(rows[0]), int(cols[0])
                    try:
                        with rasterio.open(factors.path) as src:
                            vals = src.read(window=((r, r + 1), (c, c + 1)), out_dtype="float32")[:, 0, 0]
                    except (rasterio.errors.RasterioError, OSError) as exc:
                        vals = None
                        out["notes"]["factors"] = scrub(str(registry.report_fault(factors, exc)))
                    if vals is not None:
                        for name, v in zip(factors.bands, vals, strict=False):
                            out["factors"][name] = float(v) if math.isfinite(float(v)) else None
                            layer = catalog.layers.get(f"factors/{name}")
                            if layer is not None and layer.categorical and math.isfinite(float(v)):
                                code = int(round(float(v)))
                                out["factor_classes"][name] = layer.classes.get(code, f"class {code}")
            else:
                out["notes"]["factors"] = scrub(factors.problem or "factors unreadable")
        for prefix in ("detection", "susceptibility"):
            layer = catalog.layers.get(prefix)
            if layer is None:
                continue
            try:
                info = registry.model_info(layer, chosen[prefix])
                out[f"{prefix}_model"] = info.version
                value = service.computed_value(layer, lon, lat, info, cancel)
                out[f"{prefix}_probability"] = value
                if prefix == "susceptibility" and value is not None and "susceptibility/classes" in catalog.layers:
                    cls_layer = catalog.layers["susceptibility/classes"]
                    try:
                        breaks = registry.class_breaks(info)
                    except SlidemapError as exc:
                        out["notes"]["susceptibility_class"] = scrub(str(exc))
                        continue
                    k = int(registry.classify(np.array([value], dtype=np.float32), breaks)[0])
                    out["susceptibility_class"] = k
                    out["susceptibility_class_name"] = cls_layer.classes.get(k)
            except SlidemapError as exc:
                out["notes"][prefix] = scrub(str(exc))
        return out

    # ---- the routes ----------------------------------------------------------------------------
    def service_routes(self) -> None:
        """``/health`` and ``/models``."""
        registry, cache, scrub, device = self.registry, self.service.cache, self.scrub, self.device
        executor, label = registry.executor, registry.label

        @self.router.get("/health", response_model=HealthResponse, tags=["Service"], responses=error_responses(400))
        def health() -> dict[str, Any]:
            """"ok", or "degraded" with the reasons (unreadable inputs, unloadable models, unwritable caches)."""
            problems = [scrub(p) for p in registry.problems()]
            if cache.problem:
                problems.append(cache.problem)
            problems.extend(registry.store_problems())
            catalog = registry.refresh()
            available = 0
            for layer in catalog.layers.values():
                try:
                    registry.check_input(layer, catalog)
                    available += 1
                except SlidemapError:
                    pass
            models = {}
            for role, kind in ROLES.items():
                found = registry.models(kind)
                default = registry.default_info(kind)
                models[role] = {"count": len(found),
                                "default": {"name": default.name, "version": default.version} if default else None}
            stats = cache.stats()
            if stats.get("problem"):
                stats["problem"] = scrub(str(stats["problem"]))
            return {
                "status": "degraded" if problems else "ok", "problems": [scrub(p) for p in problems],
                "region": registry.region_name, "synthetic": catalog.synthetic,
                "layers": len(catalog.layers), "available_layers": available, "models": models,
                "device": device.result,
                "cache": stats,
                "inference": {"pending_blocks": executor.pending, "max_pending_blocks": executor.max_pending,
                              "max_queue_seconds": executor.max_wait_s, "workers": executor.workers,
                              "seconds_per_block": {f"{k[0]} {k[1]}" if isinstance(k, tuple) else str(k): round(v, 4)
                                                    for k, v in dict(executor.costs).items()},
                              "dropped_blocks": executor.dropped, "refused_blocks": executor.rejected,
                              "refused_requests": executor.refused},
            }

        @self.router.get("/models", response_model=ModelsResponse, tags=["Service"], responses=error_responses(400))
        def models_route() -> dict[str, Any]:
            """Per role, the region's models (newest first) with name, version, skill and the default flag."""
            roles = {}
            for role, kind in ROLES.items():
                default = registry.default_info(kind)
                entries = []
                for m in registry.models(kind):
                    skill = skill_of(m.card)
                    ci = skill.get("ci95")
                    score = score_of(m.card)
                    entries.append({
                        "name": m.name, "version": m.version, "created": m.card.get("created"),
                        "synthetic": m.card.get("synthetic"), "skill": skill_note(m.card), "has_skill": has_skill(m.card),
                        "metric": skill.get("metric"), "score": score if math.isfinite(score) else None,
                        "ci95": [float(v) for v in ci] if isinstance(ci, list) and len(ci) == 2 and None not in ci else None,
                        "default": default is not None and default.version == m.version and default.name == m.name,
                    })
                roles[role] = {"default": default.version if default else None, "models": entries}
            return {"region": label, "synthetic": registry.synthetic, "roles": roles}

    def layer_routes(self) -> None:
        """``/layers``, legends and TileJSON."""
        registry, service, scrub, base, layer_entry = self.registry, self.service, self.scrub, self.base, self.layer_entry
        max_scale = self.settings.max_scale

        @self.router.get("/layers", response_model=LayersResponse, tags=["Layers"], responses=error_responses(400))
        def layers(request: Request) -> dict[str, Any]:
            """Every layer of the region, with absolute URLs to discover its tiles, WMTS and legend."""
            catalog = registry.refresh()
            return {"region": registry.label, "synthetic": catalog.synthetic,
                    "layers": [layer_entry(request, lyr, catalog) for lyr in catalog.layers.values()]}

        @self.router.get("/layers/{layer_id:path}/legend", tags=["Layers"], responses=error_responses(400, 404, 409, 422))
        def legend(
            layer_id: str,
            model: ModelSpec = None,
        ) -> dict[str, Any]:
            """Colours, range or classes of a layer (computed layers: of the default or the named model)."""
            layer = registry.get(layer_id)
            info = registry.model_info(layer, model) if (layer.computed and model) else None  # file layers ignore model=
            out = registry.legend(layer, info)
            return {k: (scrub(v) if isinstance(v, str) else v) for k, v in out.items()}

        @self.router.get("/layers/{layer_id:path}/{tms_id}/tilejson.json", tags=["Tiles"],
                         response_model=TileJSON, response_model_exclude_none=True,
                         responses=error_responses(400, 404, 409, 422))
        def tilejson(
            request: Request,
            layer_id: str,
            tms_id: Annotated[Literal[SUPPORTED_TMS], PathParam(description="tile matrix set")],  # type: ignore[valid-type]
            render: Render,
            format: Annotated[Literal["png", "webp", "tif", "npy"], Query(description="tile format")] = "png",
            scale: Annotated[int, Query(ge=1, le=max_scale, description="tile scale (@Nx)")] = 1,
        ) -> dict[str, Any]:
            """TileJSON 3.0.0 with absolute tile URLs that pin the model and the data (``v=``)."""
            layer = registry.get(layer_id)
            tms = get_tms(tms_id)
            params, _ = service.validate(layer, format, scale, render.params())
            info, dv = service.resolve(layer, render.model)
            q = tile_query(info, dv, params)
            suffix = f"@{scale}x" if scale > 1 else ""
            url = f"{base(request)}/layers/{layer.id}/tiles/{tms.id}/{{z}}/{{x}}/{{y}}{suffix}.{format}?{urlencode(q)}"
            minzoom, maxzoom = zoom_range(registry, layer, tms)
            w, s, e, n = wgs84_bounds(registry.grid_of(layer))
            synthetic = provenance.sentence(registry.synthetic)
            name = layer.title if info is None else f"{layer.title} - {info.name}, {skill_note(info.card)}"
            return {
                "tilejson": "3.0.0",
                "name": name,
                "description": layer.description + synthetic,
                "version": "1.0.0",
                "attribution": f"slidemap - {registry.label}" + provenance.suffix(registry.synthetic),
                "scheme": "xyz",
                "tiles": [url],
                "minzoom": minzoom,
                "maxzoom": maxzoom,
                "bounds": [w, s, e, n],
                "center": [(w + e) / 2, (s + n) / 2, min(maxzoom, max(minzoom, maxzoom - 2))],
                "legend": f"{base(request)}/layers/{layer.id}/legend" + (f"?model={info.version}" if info else ""),
                "tileSize": 256 * scale,
            }

    def data_routes(self) -> None:
        """A layer's values as GeoTIFFs: inside a GeoJSON polygon, over a box."""
        registry, service = self.registry, self.service
        number = r"-?[0-9]{1,3}(\.[0-9]{1,12})?"

        def geotiff_answer(result: Any, filename: str) -> Response:
            """An extract as a downloadable GeoTIFF (marked SYNTHETIC where the region is)."""
            headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
            if registry.synthetic:
                headers["X-Slidemap-Synthetic"] = "true"
            return Response(result.to_geotiff(), media_type="image/tiff; application=geotiff", headers=headers)

        @self.router.post(
            "/layers/{layer_id:path}/feature.tif",
            tags=["Data"],
            openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "description": "a GeoJSON Feature or (Multi)Polygon geometry in WGS84",
                "properties": {"type": {"type": "string", "enum": ["Feature", "Polygon", "MultiPolygon"]}},
                "required": ["type"]}}}}},
            responses={200: {"content": {"image/tiff; application=geotiff": {}}},
                       **error_responses(400, 404, 408, 409, 422, 503)},
            response_class=Response,
        )
        async def feature_extract(
            request: Request,
            layer_id: str,
            model: ModelSpec = None,
        ) -> Response:
            """The layer's values inside a polygon (the request body: a GeoJSON Feature or geometry in
            WGS84, at most 1 MiB) as a GeoTIFF on the layer's own grid; cells outside are no data."""
            import json

            from slidemap.server.extract import extract_feature

            raw = await read_body(request, MAX_FEATURE_BYTES, "the GeoJSON body")
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise server_errors.BadTileRequest(f"the body is not JSON ({str(exc)[:80]})") from exc
            except RecursionError as exc:  # e.g. "[" * 100000: deeper than Python's parser recurses
                raise server_errors.BadTileRequest("the body's JSON is nested too deeply") from exc
            geometry = body.get("geometry") if isinstance(body, dict) and body.get("type") == "Feature" else body
            if not isinstance(geometry, dict):
                raise server_errors.BadTileRequest("send a GeoJSON Feature with a geometry, or a geometry")
            result = await run_cancellable(request, lambda cancel: extract_feature(service, layer_id, geometry, model, cancel))
            return geotiff_answer(result, f"{layer_id.replace('/', '_')}_feature.tif")

        @self.router.get(
            "/layers/{layer_id:path}/bbox/{bbox}.tif",
            tags=["Data"],
            responses={200: {"content": {"image/tiff; application=geotiff": {}}}, **error_responses(400, 404, 409, 422, 503)},
            response_class=Response,
        )
        async def bbox_extract(
            request: Request,
            layer_id: str,
            bbox: Annotated[str, PathParam(pattern=rf"^{number},{number},{number},{number}$",
                                           description="west,south,east,north in WGS84 degrees")],
            model: ModelSpec = None,
        ) -> Response:
            """The layer's values over a box as a GeoTIFF on its own grid (native CRS and cells, no
            resampling): factor values, probabilities, or class codes with their colour table."""
            from slidemap.server.extract import extract_bbox

            box = tuple(float(v) for v in bbox.split(","))
            if not (-180 <= box[0] <= 180 and -180 <= box[2] <= 180 and -90 <= box[1] <= 90 and -90 <= box[3] <= 90):
                raise server_errors.BadTileRequest(f"bbox {bbox}: longitudes within -180..180, latitudes within -90..90")
            result = await run_cancellable(request, lambda cancel: extract_bbox(service, layer_id, box, model, cancel))
            return geotiff_answer(result, f"{layer_id.replace('/', '_')}_{bbox.replace(',', '_')}.tif")

    def tile_routes(self) -> None:
        """XYZ tiles: ``/layers/{id}/tiles/{tms}/{z}/{x}/{y}[@Nx].{fmt}``."""
        answer_tile = self.answer_tile
        y_pattern = rf"^[0-9]{{1,9}}(@[1-{min(9, self.settings.max_scale)}]x)?\.({'|'.join(FORMATS)})$"

        @self.router.get(
            "/layers/{layer_id:path}/tiles/{tms_id}/{z}/{x}/{y_fmt}",
            tags=["Tiles"],
            responses={200: {"content": {m: {} for m in FORMATS.values()}}, 304: {"description": "not modified"},
                       **error_responses(400, 404, 409, 422, 503)},
            response_class=Response,
        )
        async def tile(
            request: Request,
            layer_id: str,
            tms_id: Annotated[Literal[SUPPORTED_TMS], PathParam(description="tile matrix set")],  # type: ignore[valid-type]
            z: Annotated[int, PathParam(ge=0, le=30)],
            x: Annotated[int, PathParam(ge=0, le=2**30)],
            y_fmt: Annotated[str, PathParam(pattern=y_pattern, description="`{y}.{format}` or `{y}@{N}x.{format}`")],
            render: Render,
            v: Annotated[str | None, Query(pattern=DATA_TAG, description="data tag from TileJSON: pins the data (immutable)")] = None,
        ) -> Response:
            """One tile. Outside the region: an empty transparent tile. ETag + If-None-Match -> 304."""
            stem, fmt = y_fmt.rsplit(".", 1)
            y_text, _, scale_text = stem.partition("@")
            y, scale = int(y_text), int(scale_text.rstrip("x") or 1)
            return await answer_tile(request, layer_id, tms_id, z, x, y, scale, fmt, render.params(), render.model, v)

    def wmts_routes(self) -> None:
        """OGC WMTS capabilities, per layer and for all."""
        registry, service, base = self.registry, self.service, self.base

        @self.router.get("/layers/{layer_id:path}/WMTSCapabilities.xml", tags=["OGC"], response_class=Response,
                         responses={200: {"content": {"application/xml": {}}}, **error_responses(400, 404, 409, 422)})
        def layer_wmts(
            request: Request,
            layer_id: str,
            render: Render,
            tms: Annotated[Literal[SUPPORTED_TMS], Query(description="tile matrix set")] = "WebMercatorQuad",  # type: ignore[valid-type]
            format: Annotated[Literal["png", "webp"], Query()] = "png",
        ) -> Response:
            """One layer's WMTS capabilities (its tiles pin the model and data, and carry the render query)."""
            layer = registry.get(layer_id)
            params, _ = service.validate(layer, format, 1, render.params())
            info, dv = service.resolve(layer, render.model)
            q = tile_query(info, dv, params)
            xml = capabilities(registry, [(layer, q)], base(request), get_tms(tms), format)
            return Response(xml, media_type="application/xml")

        @self.router.get("/WMTSCapabilities.xml", tags=["OGC"], response_class=Response,
                         responses={200: {"content": {"application/xml": {}}}, **error_responses(400, 404, 422)})
        def all_wmts(
            request: Request,
            tms: Annotated[Literal[SUPPORTED_TMS] | None,  # type: ignore[valid-type]
                           Query(description="one tile matrix set (default: every supported set that holds the "
                                             "region, WebMercatorQuad first)")] = None,
        ) -> Response:
            """All available layers in one capabilities document (computed layers pin their default model)."""
            tmsobj = get_tms(tms) if tms else [get_tms(t) for t in SUPPORTED_TMS]
            parts = []
            for layer in registry.layers.values():
                try:
                    info, dv = service.resolve(layer, None)
                    registry.grid_of(layer)
                except SlidemapError:
                    continue  # e.g. a computed layer without a trained model, an unreadable input
                parts.append((layer, tile_query(info, dv, RenderParams())))
            xml = capabilities(registry, parts, base(request), tmsobj)
            return Response(xml, media_type="application/xml")

    def point_routes(self) -> None:
        """``/point``: every layer's value at a location."""
        registry, point_values = self.registry, self.point_values

        @self.router.get("/point", response_model=PointResponse, tags=["Point"], responses=error_responses(400, 404, 409, 422, 503))
        async def point(
            request: Request,
            lon: Annotated[float, Query(ge=-180, le=180, allow_inf_nan=False, description="longitude (WGS84)")],
            lat: Annotated[float, Query(ge=-90, le=90, allow_inf_nan=False, description="latitude (WGS84)")],
            detection_model: Annotated[str | None, Query(pattern=MODEL_SPEC, description="detector name or version (default: the region's default)")] = None,
            susceptibility_model: Annotated[str | None, Query(pattern=MODEL_SPEC, description="susceptibility model name or version (default: the region's default)")] = None,
        ) -> dict[str, Any]:
            """Factor values and model outputs (computed on demand, one block each) at a location."""
            chosen = {"detection": detection_model, "susceptibility": susceptibility_model}
            # Named models must exist (404) before anything is computed.
            for lid, spec in chosen.items():
                if spec and lid in registry.layers:
                    registry.model_info(registry.layers[lid], spec)
            return await run_cancellable(request, lambda cancel: point_values(lon, lat, chosen, cancel))

    def inventory_routes(self) -> None:
        """The inventories as GeoJSON."""
        from slidemap.server.vectors import SOURCES, InventoryVectors

        vectors = InventoryVectors(self.registry)

        @self.router.get("/inventory/{source}.geojson", tags=["Layers"], response_class=Response,
                         responses={200: {"content": {"application/geo+json": {}}}, **error_responses(400, 404, 422)})
        def inventory_geojson(source: Literal[SOURCES]) -> Response:  # type: ignore[valid-type]
            """The known inventory (landslides and non-landslides, points and polygons) or the latest
            detected landslide polygons, as GeoJSON in WGS84, for web maps."""
            return Response(vectors.geojson(source), media_type="application/geo+json")

    def page_routes(self) -> None:
        """The offline map page at ``/`` (and ``/map``)."""
        registry, templates = self.registry, self.templates

        @self.router.get("/", response_class=HTMLResponse, tags=["Map"], responses=error_responses(400))
        def map_page(request: Request) -> HTMLResponse:
            """An offline map of every layer (Leaflet served by this app, no CDN)."""
            return templates.TemplateResponse(
                request, "map.html", {"title": f"slidemap - {registry.label}", "synthetic": registry.synthetic,
                                      "region": registry.label},
            )

        @self.router.get("/map", include_in_schema=False)
        def map_alias(request: Request) -> HTMLResponse:
            return map_page(request)
