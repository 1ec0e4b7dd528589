"""The slidemap tile server: ``create_app(region_dir) -> FastAPI``.

Endpoints (every error is JSON ``{"detail", "status"}``, see :mod:`slidemap.server.errors`):

* ``GET /health`` - "ok" or "degraded" with the reasons; region, models, device, cache, queue.
* ``GET /models`` - per role (susceptibility, detection) the models with name, version, skill, default.
* ``GET /layers`` - every layer with absolute ``tiles``, ``tilejson``, ``wmts``, ``legend`` URLs.
* ``GET /layers/{id}/legend`` - colours, range or classes of a layer.
* ``GET /layers/{id}/{tms}/tilejson.json`` - TileJSON 3.0.0 (``format``, ``scale``, ``model``).
* ``GET /layers/{id}/tiles/{tms}/{z}/{x}/{y}[@Nx].{png|webp|tif|npy}`` - tiles; ETag, 304.
* ``GET /layers/{id}/WMTSCapabilities.xml`` and ``GET /WMTSCapabilities.xml`` - OGC WMTS.
* ``GET /point?lon=&lat=`` - factor values and model outputs at a location.
* ``GET /reports[/{kind}/{run_id}[/{file}]]`` - the training and inventory reports and their figures.
* ``GET /downloads[/{path}]`` - the region's outputs (maps, styles, inventories, tile archives, reports).
* ``GET /`` - the map page (Leaflet served from the installed xstatic-leaflet package).
* ``/tileMatrixSets``, ``/colorMaps`` - reference lists (:mod:`slidemap.server.reference`); ``/docs``.

Safety by default: every request has a bounded cost (tile size, blocks per request, an
inference queue that answers 503 at once when its expected wait is too long, work dropped when
the client goes away, URLs of at most ``max_url_length``); public URLs come from ``public_url``
or from a Host header in ``allowed_hosts`` (other Host headers get 400, which also stops DNS
rebinding); no response names a server path; CORS is off unless ``cors_origins`` is given.
"""

# No `from __future__ import annotations` here: route parameters are annotated with values of
# this server's settings (max scale, tile name pattern), which FastAPI must see evaluated.
import contextlib
import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlencode, urlsplit

import anyio
import numpy as np
import rasterio
from fastapi import FastAPI, Path as PathParam, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from slidemap.compute import provenance
from slidemap.compute.maps.blocks import short_error
from slidemap.compute.models.select import ROLES, has_skill, score_of, skill_note, skill_of
from slidemap.errors import SlidemapError
from slidemap.server import errors as server_errors
from slidemap.server.errors import ErrorBody, Scrubber, error_responses
from slidemap.server.layers import Layer, LayerRegistry
from slidemap.server.reference import ColorMapName, router as reference_router
from slidemap.server.service import ServerSettings, build_service
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

log = logging.getLogger("slidemap.server")
HERE = Path(__file__).parent
MODEL_SPEC = r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$"  # a model name or a version (prefix); never a path
DATA_TAG = r"^[0-9a-f]{16}$"
RESCALE = r"^-?[0-9]{1,15}(\.[0-9]{1,15})?,-?[0-9]{1,15}(\.[0-9]{1,15})?$"
MODEL_HELP = "model name (its newest version) or version (hash or a prefix of 6+); default: the region's default; ignored by file-backed layers"
RESCALE_HELP = ("min,max mapped to the colour ramp (max < min reverses it, min == max draws a step); once per band "
                "or once for all; ignored by categorical layers")
COLORMAP_HELP = "colormap name (GET /colorMaps); ignored by RGB and categorical layers"
T = TypeVar("T")


class LayerEntry(BaseModel):
    id: str
    title: str = Field(description="computed layers name their model and its skill, e.g. 'NO SKILL (...)'")
    kind: str = Field(description="imagery | factor | detection | susceptibility | overlay")
    units: str
    categorical: bool = Field(False, description="class values (nearest-neighbour at every zoom, a class legend)")
    description: str
    synthetic: bool
    computed: bool = Field(description="computed on request by a model through the block engine")
    available: bool = Field(True, description="false when an input or model is missing; see `problem`")
    problem: str | None = None
    formats: list[str]
    minzoom: int | None = None
    maxzoom: int | None = None
    bounds: list[float] | None = Field(None, description="west, south, east, north (WGS84)")
    tiles: str | None = Field(None, description="XYZ PNG template in WebMercatorQuad")
    tilejson: str
    wmts: str
    legend: str
    model: str | None = Field(None, description="the default model's version (computed layers)")
    model_name: str | None = None
    skill: str | None = Field(None, description="the default model's skill, e.g. 'ROC-AUC 0.912 [0.88, 0.94]'")
    has_skill: bool | None = Field(None, description="false: no model of this role has skill (no default)")
    models: list[str] = Field(default_factory=list, description="model versions selectable with ?model=")


class LayersResponse(BaseModel):
    region: str
    synthetic: bool
    layers: list[LayerEntry]


class ModelEntry(BaseModel):
    name: str
    version: str
    created: str | None = None
    synthetic: bool | None = None
    skill: str = Field(description="e.g. 'ROC-AUC 0.912 [0.88, 0.94]' or 'NO SKILL (...)'")
    has_skill: bool
    metric: str | None = None
    score: float | None = None
    ci95: list[float] | None = None
    default: bool = Field(description="the region's default for this role")


class RoleModels(BaseModel):
    default: str | None = Field(description="version of the default model (None: no model with skill)")
    models: list[ModelEntry]


class ModelsResponse(BaseModel):
    region: str
    synthetic: bool
    roles: dict[str, RoleModels] = Field(description="susceptibility and detection")


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    problems: list[str] = Field(description="why the server is degraded (empty when ok)")
    region: str
    synthetic: bool
    layers: int
    available_layers: int
    models: dict[str, dict[str, Any]]
    device: dict[str, Any]
    cache: dict[str, Any]
    inference: dict[str, Any]


class PointResponse(BaseModel):
    """Values at one location. Keys are flat so dashboards read them directly."""

    lon: float
    lat: float
    inside: bool = Field(description="the point lies inside the region's analysis grid")
    synthetic: bool
    factors: dict[str, float | None] = Field(description="factor values in physical units (null = nodata)")
    factor_classes: dict[str, str] = Field(default_factory=dict,
                                           description="class names of the categorical factors' values there")
    units: dict[str, str]
    detection_probability: float | None = Field(None, description="U-Net landslide probability, 0..1")
    detection_model: str | None = None
    susceptibility_probability: float | None = Field(None, description="susceptibility probability, 0..1")
    susceptibility_class: int | None = Field(None, description="1 very low .. 5 very high")
    susceptibility_class_name: str | None = None
    susceptibility_model: str | None = None
    notes: dict[str, str] = Field(default_factory=dict, description="why an output is missing")


def host_name(host: str) -> str | None:
    """The name part of a Host header (``[::1]:8000`` -> ``::1``); None when it is not a host."""
    host = host.strip()
    if not host or any(c in host for c in "/\\@?#\"'<> \t"):
        return None
    if host.startswith("["):
        end = host.find("]")
        return host[1:end].lower() if end > 0 else None
    name, _, port = host.partition(":")
    if port and not port.isdigit():
        return None
    return name.lower() or None


class RequestPolicy:
    """ASGI middleware: a Host header from the allowed list and a bounded URL, or a JSON 4xx."""

    def __init__(self, app, allowed_hosts: tuple[str, ...], max_url_length: int) -> None:
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.allowed = {h.strip("[]").lower() for h in allowed_hosts}
        self.max_url_length = max_url_length

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        name = host_name(raw)
        problem = None
        status = 400
        if name is None or not (self.any_host or name in self.allowed):
            shown = raw[:80].encode("ascii", "replace").decode()
            problem = (f"Host header {shown!r} is not served here; use one of {', '.join(sorted(self.allowed))} "
                       "or start the server with --public-url / --allowed-host")
        elif len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") > self.max_url_length:
            status = 414
            problem = f"URL longer than {self.max_url_length} characters"
        if problem is not None:
            await JSONResponse({"detail": problem, "status": status}, status_code=status)(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def run_cancellable(request: Request, fn: Callable[[threading.Event], T]) -> T:
    """Run ``fn(cancel)`` in a worker thread; ``cancel`` is set when the client disconnects, so
    queued model work nobody waits for is dropped (see ``InferenceExecutor``)."""
    cancel = threading.Event()

    async def watch() -> None:
        while not cancel.is_set():
            if await request.is_disconnected():
                cancel.set()
                return
            await anyio.sleep(0.25)

    result: Any = None
    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        try:
            result = await anyio.to_thread.run_sync(fn, cancel)
        except Exception as exc:  # raised below, outside the task group (not as an ExceptionGroup)
            error = exc
        finally:
            tg.cancel_scope.cancel()
    if error is not None:
        raise error
    return result


class DeviceProbe:
    """``device_summary()`` of TensorFlow, taken once in the background (importing TensorFlow takes
    seconds; /health must not)."""

    def __init__(self) -> None:
        self.result: dict[str, Any] = {"device": "unknown", "note": "not probed"}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.result = {"device": "unknown", "note": "probing (TensorFlow is loading)"}

        def probe() -> None:
            try:
                from slidemap.compute.models import runtime as inference

                self.result = inference.device_summary()
            except Exception as exc:  # noqa: BLE001 - a missing TensorFlow is reported, not fatal
                self.result = {"device": "unavailable", "note": short_error(exc)}

        self._thread = threading.Thread(target=probe, name="slidemap-device-probe", daemon=True)
        self._thread.start()


# ---- the app -----------------------------------------------------------------------------------
def create_app(region_dir: Path, settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    service = build_service(region_dir, settings)
    registry, cache, executor = service.registry, service.cache, service.registry.executor
    scrub = Scrubber(registry.region_dir, registry.cache_dir)
    device = DeviceProbe()
    public_url = settings.public_url.rstrip("/") if settings.public_url else None
    allowed_hosts = tuple(settings.allowed_hosts)
    if public_url:
        public_host = urlsplit(public_url).hostname
        if public_host:
            allowed_hosts += (public_host,)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.report_device:
            device.start()
        yield
        executor.shutdown()

    label = registry.label
    app = FastAPI(
        title=f"slidemap tile server - {label}",
        description=(
            "Landslide inventory and susceptibility tiles with on-demand model compute."
            + (" **SYNTHETIC data**: every layer of this region is generated, not observed." if registry.synthetic else "")
        ),
        version="1",
        lifespan=lifespan,
        docs_url=None,  # replaced below: FastAPI's default docs page loads Swagger UI from a CDN
        redoc_url=None,
    )
    app.state.registry = registry
    app.state.cache = cache
    app.state.service = service
    app.state.executor = executor
    app.state.settings = settings
    app.state.device = device
    server_errors.install(app, scrub)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "HEAD"],
                           expose_headers=["ETag"])
    app.add_middleware(RequestPolicy, allowed_hosts=allowed_hosts, max_url_length=settings.max_url_length)

    def base(request: Request) -> str:
        if public_url:
            return public_url
        host = request.headers.get("host", "127.0.0.1")  # checked by RequestPolicy
        return f"{request.url.scheme}://{host}{request.scope.get('root_path', '')}"

    app.include_router(reference_router(base))

    def model_fields(layer: Layer, spec: str | None) -> dict[str, Any]:
        """Which model a computed layer shows, its skill, and a title that says so."""
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

    def layer_entry(request: Request, layer: Layer, catalog) -> dict[str, Any]:
        b = base(request)
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
            fields = model_fields(layer, None)
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

    # ---- service ------------------------------------------------------------------------------
    @app.get("/health", response_model=HealthResponse, tags=["Service"], responses=error_responses(400))
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

    @app.get("/models", response_model=ModelsResponse, tags=["Service"], responses=error_responses(400))
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

    @app.get("/layers", response_model=LayersResponse, tags=["Layers"], responses=error_responses(400))
    def layers(request: Request) -> dict[str, Any]:
        """Every layer of the region, with absolute URLs to discover its tiles, WMTS and legend."""
        catalog = registry.refresh()
        return {"region": registry.label, "synthetic": catalog.synthetic,
                "layers": [layer_entry(request, lyr, catalog) for lyr in catalog.layers.values()]}

    @app.get("/layers/{layer_id:path}/legend", tags=["Layers"], responses=error_responses(400, 404, 409, 422))
    def legend(
        layer_id: str,
        model: Annotated[str | None, Query(pattern=MODEL_SPEC, description=MODEL_HELP)] = None,
    ) -> dict[str, Any]:
        """Colours, range or classes of a layer (computed layers: of the default or the named model)."""
        layer = registry.get(layer_id)
        info = registry.model_info(layer, model) if (layer.computed and model) else None  # file layers ignore model=
        out = registry.legend(layer, info)
        return {k: (scrub(v) if isinstance(v, str) else v) for k, v in out.items()}

    @app.get("/layers/{layer_id:path}/{tms_id}/tilejson.json", tags=["Tiles"],
             responses=error_responses(400, 404, 409, 422))
    def tilejson(
        request: Request,
        layer_id: str,
        tms_id: Annotated[Literal[SUPPORTED_TMS], PathParam(description="tile matrix set")],  # type: ignore[valid-type]
        format: Annotated[Literal["png", "webp", "tif", "npy"], Query(description="tile format")] = "png",
        scale: Annotated[int, Query(ge=1, le=settings.max_scale, description="tile scale (@Nx)")] = 1,
        model: Annotated[str | None, Query(pattern=MODEL_SPEC, description=MODEL_HELP)] = None,
        rescale: Annotated[list[Annotated[str, Field(pattern=RESCALE)]] | None,
                           Query(max_length=4, description=RESCALE_HELP)] = None,
        colormap_name: Annotated[ColorMapName | None, Query(description=COLORMAP_HELP)] = None,
    ) -> dict[str, Any]:
        """TileJSON 3.0.0 with absolute tile URLs that pin the model and the data (``v=``)."""
        layer = registry.get(layer_id)
        tms = get_tms(tms_id)
        params, _ = service.validate(layer, format, scale, _render_params(rescale, colormap_name))
        info, dv = service.resolve(layer, model)
        q = _tile_query(info, dv, params)
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

    y_pattern = rf"^[0-9]{{1,9}}(@[1-{min(9, settings.max_scale)}]x)?\.({'|'.join(FORMATS)})$"

    number = r"-?[0-9]{1,3}(\.[0-9]{1,12})?"

    def geotiff_answer(result: Any, filename: str) -> Response:
        """An extract as a downloadable GeoTIFF (marked SYNTHETIC where the region is)."""
        headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
        if registry.synthetic:
            headers["X-Slidemap-Synthetic"] = "true"
        return Response(result.to_geotiff(), media_type="image/tiff; application=geotiff", headers=headers)

    max_feature_bytes = 1 << 20  # a polygon of tens of thousands of vertices; more is not a map request

    @app.post(
        "/layers/{layer_id:path}/feature.tif",
        tags=["Data"],
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "description": "a GeoJSON Feature or (Multi)Polygon geometry in WGS84",
            "properties": {"type": {"type": "string", "enum": ["Feature", "Polygon", "MultiPolygon"]}},
            "required": ["type"]}}}}},
        responses={200: {"content": {"image/tiff; application=geotiff": {}}}, **error_responses(400, 404, 409, 422, 503)},
        response_class=Response,
    )
    async def feature_extract(
        request: Request,
        layer_id: str,
        model: Annotated[str | None, Query(pattern=MODEL_SPEC, description=MODEL_HELP)] = None,
    ) -> Response:
        """The layer's values inside a polygon (the request body: a GeoJSON Feature or geometry in
        WGS84, at most 1 MiB) as a GeoTIFF on the layer's own grid; cells outside are no data."""
        import json

        from slidemap.server.extract import extract_feature

        raw = bytearray()
        async for chunk in request.stream():  # read at most the limit, whatever Content-Length says
            raw += chunk
            if len(raw) > max_feature_bytes:
                raise server_errors.OverBudget(f"the GeoJSON body is larger than {max_feature_bytes} bytes; "
                                               "simplify the polygon")
        try:
            body = json.loads(bytes(raw))
        except ValueError as exc:
            raise server_errors.BadTileRequest(f"the body is not JSON ({str(exc)[:80]})") from exc
        geometry = body.get("geometry") if isinstance(body, dict) and body.get("type") == "Feature" else body
        if not isinstance(geometry, dict):
            raise server_errors.BadTileRequest("send a GeoJSON Feature with a geometry, or a geometry")
        result = await run_cancellable(request, lambda cancel: extract_feature(service, layer_id, geometry, model, cancel))
        return geotiff_answer(result, f"{layer_id.replace('/', '_')}_feature.tif")

    @app.get(
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
        model: Annotated[str | None, Query(pattern=MODEL_SPEC, description=MODEL_HELP)] = None,
    ) -> Response:
        """The layer's values over a box as a GeoTIFF on its own grid (native CRS and cells, no
        resampling): factor values, probabilities, or class codes with their colour table."""
        from slidemap.server.extract import extract_bbox

        box = tuple(float(v) for v in bbox.split(","))
        if not (-180 <= box[0] <= 180 and -180 <= box[2] <= 180 and -90 <= box[1] <= 90 and -90 <= box[3] <= 90):
            raise server_errors.BadTileRequest(f"bbox {bbox}: longitudes within -180..180, latitudes within -90..90")
        result = await run_cancellable(request, lambda cancel: extract_bbox(service, layer_id, box, model, cancel))
        return geotiff_answer(result, f"{layer_id.replace('/', '_')}_{bbox.replace(',', '_')}.tif")

    @app.get(
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
        model: Annotated[str | None, Query(pattern=MODEL_SPEC, description=MODEL_HELP)] = None,
        v: Annotated[str | None, Query(pattern=DATA_TAG, description="data tag from TileJSON: pins the data (immutable)")] = None,
        rescale: Annotated[list[Annotated[str, Field(pattern=RESCALE)]] | None,
                           Query(max_length=4, description=RESCALE_HELP)] = None,
        colormap_name: Annotated[ColorMapName | None, Query(description=COLORMAP_HELP)] = None,
    ) -> Response:
        """One tile. Outside the region: an empty transparent tile. ETag + If-None-Match -> 304."""
        stem, fmt = y_fmt.rsplit(".", 1)
        y_text, _, scale_text = stem.partition("@")
        y, scale = int(y_text), int(scale_text.rstrip("x") or 1)
        params = _render_params(rescale, colormap_name)
        return await answer_tile(request, layer_id, tms_id, z, x, y, scale, fmt, params, model, v)

    async def answer_tile(request: Request, layer_id: str, tms_id: str, z: int, x: int, y: int, scale: int,
                          fmt: str, params: RenderParams, model: str | None, v: str | None) -> Response:
        """One tile through the service (cache, single flight, cancellation), with its ETag and
        conditional answer: the XYZ and the OGC API routes both end here."""
        result = await run_cancellable(
            request, lambda cancel: service.tile(layer_id, tms_id, z, x, y, scale, fmt, params, model, v, cancel))
        headers = {"ETag": result.etag, "Cache-Control": result.cache_control, **result.headers}
        if registry.synthetic:
            headers["X-Slidemap-Synthetic"] = "true"  # tiles of generated, not observed, data
        inm = request.headers.get("if-none-match")
        if inm and (inm.strip() == "*" or result.etag in [t.strip() for t in inm.split(",")]):
            return Response(status_code=304, headers=headers)
        return Response(result.content, media_type=result.media_type, headers=headers)

    from slidemap.server.ogc_tiles import router as ogc_tiles_router
    from slidemap.server.downloads import router as downloads_router
    from slidemap.server.reports import router as reports_router

    app.include_router(reports_router(registry.region_dir))
    app.include_router(downloads_router(registry.region_dir))

    app.include_router(ogc_tiles_router(
        base, registry, service,
        lambda request, lid, tms_id, z, x, y, fmt, model: answer_tile(
            request, lid, tms_id, z, x, y, 1, fmt, RenderParams(), model, None)))

    @app.get("/layers/{layer_id:path}/WMTSCapabilities.xml", tags=["OGC"], response_class=Response,
             responses={200: {"content": {"application/xml": {}}}, **error_responses(400, 404, 409, 422)})
    def layer_wmts(
        request: Request,
        layer_id: str,
        tms: Annotated[Literal[SUPPORTED_TMS], Query(description="tile matrix set")] = "WebMercatorQuad",  # type: ignore[valid-type]
        format: Annotated[Literal["png", "webp"], Query()] = "png",
        model: Annotated[str | None, Query(pattern=MODEL_SPEC, description=MODEL_HELP)] = None,
        rescale: Annotated[list[Annotated[str, Field(pattern=RESCALE)]] | None,
                           Query(max_length=4, description=RESCALE_HELP)] = None,
        colormap_name: Annotated[ColorMapName | None, Query(description=COLORMAP_HELP)] = None,
    ) -> Response:
        layer = registry.get(layer_id)
        params, _ = service.validate(layer, format, 1, _render_params(rescale, colormap_name))
        info, dv = service.resolve(layer, model)
        q = _tile_query(info, dv, params)
        xml = capabilities(registry, [(layer, q)], base(request), get_tms(tms), format)
        return Response(xml, media_type="application/xml")

    @app.get("/WMTSCapabilities.xml", tags=["OGC"], response_class=Response,
             responses={200: {"content": {"application/xml": {}}}, **error_responses(400, 422)})
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
            parts.append((layer, _tile_query(info, dv, RenderParams())))
        xml = capabilities(registry, parts, base(request), tmsobj)
        return Response(xml, media_type="application/xml")

    @app.get("/point", response_model=PointResponse, tags=["Point"], responses=error_responses(400, 404, 409, 422, 503))
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
        return await run_cancellable(request, lambda cancel: _point(lon, lat, chosen, cancel))

    def _point(lon: float, lat: float, chosen: dict[str, str | None], cancel: threading.Event) -> dict[str, Any]:
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

    from slidemap.server.vectors import SOURCES, InventoryVectors

    vectors = InventoryVectors(registry)

    @app.get("/inventory/{source}.geojson", tags=["Layers"], response_class=Response,
             responses={200: {"content": {"application/geo+json": {}}}, **error_responses(400, 404, 422)})
    def inventory_geojson(source: Literal[SOURCES]) -> Response:  # type: ignore[valid-type]
        """The known inventory (landslides and non-landslides, points and polygons) or the latest
        detected landslide polygons, as GeoJSON in WGS84, for web maps."""
        return Response(vectors.geojson(source), media_type="application/geo+json")

    # ---- map page -----------------------------------------------------------------------------
    from starlette.templating import Jinja2Templates

    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.mount("/vendor/leaflet", StaticFiles(directory=_leaflet_dir()), name="leaflet")

    @app.get("/", response_class=HTMLResponse, tags=["Map"], responses=error_responses(400))
    def map_page(request: Request) -> HTMLResponse:
        """An offline map of every layer (Leaflet served by this app, no CDN)."""
        return templates.TemplateResponse(
            request, "map.html", {"title": f"slidemap - {registry.label}", "synthetic": registry.synthetic,
                                  "region": registry.label},
        )

    _install_docs(app)

    @app.get("/map", include_in_schema=False)
    def map_alias(request: Request) -> HTMLResponse:
        return map_page(request)

    _install_openapi(app, registry)
    return app


def _render_params(rescale: list[str] | None, colormap_name: str | None) -> RenderParams:
    return RenderParams(parse_rescale(rescale), colormap_name)


def _tile_query(info, data_version: str, params: RenderParams) -> list[tuple[str, str]]:
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


def _install_openapi(app: FastAPI, registry: LayerRegistry) -> None:
    """The schema says what the server does: every error is :class:`ErrorBody` (422 included, not
    FastAPI's list form), and ``layer_id`` lists the region's layers."""
    from fastapi.openapi.utils import get_openapi

    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        catalog = registry.refresh()
        if cached.get("signature") == catalog.signature:
            return cached["schema"]
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        components["ErrorBody"] = ErrorBody.model_json_schema()
        ref = {"$ref": "#/components/schemas/ErrorBody"}
        for ops in schema.get("paths", {}).values():
            for op in ops.values():
                for code, resp in op.get("responses", {}).items():
                    if code.isdigit() and int(code) >= 400:
                        resp["content"] = {"application/json": {"schema": ref}}
                        if code == "422":
                            resp["description"] = server_errors.ERROR_STATUSES[422]
                for param in op.get("parameters", []):
                    if param.get("name") == "layer_id":
                        param["schema"] = {"type": "string", "enum": sorted(catalog.layers),
                                           "description": "a layer id from GET /layers"}
        cached.update(signature=catalog.signature, schema=schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _install_docs(app: FastAPI) -> None:
    """/docs with Swagger UI served from the installed swagger-ui-bundle, or a plain page without it."""
    from fastapi.openapi.docs import get_swagger_ui_html

    try:
        import swagger_ui_bundle

        app.mount("/vendor/swagger-ui", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger")
        have_swagger = True
    except ImportError:
        have_swagger = False

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        if have_swagger:
            # Relative URLs: the page works behind any proxy prefix and never echoes the Host header.
            return get_swagger_ui_html(
                openapi_url="openapi.json", title=f"{app.title} - API docs",
                swagger_js_url="vendor/swagger-ui/swagger-ui-bundle.js",
                swagger_css_url="vendor/swagger-ui/swagger-ui.css",
                swagger_favicon_url="vendor/swagger-ui/favicon-32x32.png",
            )
        from html import escape

        rows = []
        for path, ops in app.openapi().get("paths", {}).items():
            for method, op in ops.items():
                params = ", ".join(p["name"] for p in op.get("parameters", []))
                rows.append(f"<tr><td>{method.upper()}</td><td><code>{escape(path)}</code></td>"
                            f"<td>{escape(op.get('summary', ''))}</td><td>{escape(params)}</td></tr>")
        return HTMLResponse(
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(app.title)}</title></head><body>"
            f"<h1>{escape(app.title)}</h1><p>Machine-readable schema: <a href='openapi.json'>openapi.json</a></p>"
            f"<table border='1' cellpadding='4'><tr><th>method</th><th>path</th><th>summary</th><th>parameters</th></tr>"
            f"{''.join(rows)}</table></body></html>"
        )


def _leaflet_dir() -> str:
    import xstatic.pkg.leaflet as xleaflet

    return str(xleaflet.BASE_DIR)
