"""The slidemap tile server: ``create_app(region_dir) -> FastAPI``.

Endpoints (all JSON errors are ``{"detail", "status"}``, see :mod:`slidemap.server.errors`):

* ``GET /health`` - liveness, region, models, cache and queue state.
* ``GET /layers`` - every layer with absolute ``tilejson``, ``wmts``, ``legend`` URLs.
* ``GET /layers/{id}/legend`` - colours, range or classes of a layer.
* ``GET /layers/{id}/{tms}/tilejson.json`` - TileJSON 3.0.0 (``format``, ``scale``, ``model``).
* ``GET /layers/{id}/tiles/{tms}/{z}/{x}/{y}[@Nx].{png|webp|tif|npy}`` - tiles; ETag, 304.
* ``GET /layers/{id}/WMTSCapabilities.xml`` and ``GET /WMTSCapabilities.xml`` - OGC WMTS.
* ``GET /point?lon=&lat=`` - factor values and model outputs at a location.
* ``GET /`` - the map page (Leaflet served from the installed xstatic-leaflet package).
* ``/tileMatrixSets``, ``/colorMaps`` - titiler's own factories; ``/docs`` - OpenAPI.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import numpy as np
import rasterio
from fastapi import FastAPI, Path as PathParam, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from rasterio.warp import transform as transform_xy
from rio_tiler.colormap import cmap as default_cmap

from slidemap.compute.blocks import InferenceExecutor
from slidemap.errors import SlidemapError
from slidemap.server import errors as server_errors
from slidemap.server.cache import TileCache
from slidemap.server.layers import LayerRegistry
from slidemap.server.tiles import (
    FORMATS,
    SUPPORTED_TMS,
    BadTileRequest,
    RenderParams,
    TileService,
    get_tms,
    parse_rescale,
    zoom_range,
)
from slidemap.server.wmts import capabilities

log = logging.getLogger("slidemap.server")
HERE = Path(__file__).parent
MODEL_VERSION = r"^[0-9a-f]{6,64}$"
_Y_RE = re.compile(r"^(?P<y>\d{1,9})(?:@(?P<scale>\d{1,3})x)?\.(?P<fmt>[a-z0-9]{1,8})$")


@dataclass
class ServerSettings:
    """Knobs of one server. Defaults suit a laptop; `slidemap serve` exposes the common ones."""

    cache_dir: Path | None = None  # default REGION/cache (block store and tile cache)
    cache_size_mb: float = 512.0  # tile cache limit (LRU); 0 disables the tile cache
    max_blocks_per_request: int = 16  # compute budget per request, in native blocks
    over_budget: Literal["partial", "error"] = "partial"  # marked partial tile, or 422
    inference_workers: int = 1
    max_pending_blocks: int = 64  # queue bound; beyond it 503 + Retry-After
    retry_after_s: int = 2
    block_size: int = 256
    max_scale: int = 4  # largest @Nx
    max_age_s: int = 300  # Cache-Control max-age of tiles whose URL does not pin a model version
    compute_timeout_s: float = 300.0
    loaders: dict[str, Any] | None = None  # model loaders by kind (tests inject fakes)


class LayerEntry(BaseModel):
    id: str
    title: str
    kind: str = Field(description="imagery | factor | detection | susceptibility | overlay")
    units: str
    description: str
    synthetic: bool
    computed: bool = Field(description="computed on request by a model through the block engine")
    formats: list[str]
    minzoom: int
    maxzoom: int
    bounds: list[float] = Field(description="west, south, east, north (WGS84)")
    tiles: str = Field(description="XYZ PNG template in WebMercatorQuad")
    tilejson: str
    wmts: str
    legend: str
    model: str | None = Field(None, description="default model version for computed layers")
    models: list[str] = Field(default_factory=list, description="model versions selectable with ?model=")


class LayersResponse(BaseModel):
    region: str
    synthetic: bool
    layers: list[LayerEntry]


class PointResponse(BaseModel):
    """Values at one location. Keys are flat so dashboards read them directly."""

    lon: float
    lat: float
    inside: bool = Field(description="the point lies inside the region's analysis grid")
    synthetic: bool
    factors: dict[str, float | None] = Field(description="factor values in physical units (null = nodata)")
    units: dict[str, str]
    detection_probability: float | None = Field(None, description="U-Net landslide probability, 0..1")
    detection_model: str | None = None
    susceptibility_probability: float | None = Field(None, description="susceptibility probability, 0..1")
    susceptibility_class: int | None = Field(None, description="1 very low .. 5 very high")
    susceptibility_class_name: str | None = None
    susceptibility_model: str | None = None
    notes: dict[str, str] = Field(default_factory=dict, description="why an output is missing")


def build_service(region_dir: Path, settings: ServerSettings | None = None) -> TileService:
    """Registry, block engines, executor and tile cache of a region, without HTTP (also for seeding)."""
    settings = settings or ServerSettings()
    region_dir = Path(region_dir).resolve()
    if not region_dir.is_dir():
        raise SlidemapError(f"{region_dir}: no such region folder; make one with `slidemap demo-region` or write region.toml")
    cache_dir = Path(settings.cache_dir) if settings.cache_dir else region_dir / "cache"
    executor = InferenceExecutor(settings.inference_workers, settings.max_pending_blocks, settings.retry_after_s)
    registry = LayerRegistry(region_dir, cache_dir, executor, settings.loaders, settings.block_size,
                             settings.compute_timeout_s)
    cache = TileCache(cache_dir / "tiles", int(settings.cache_size_mb * 1024 * 1024))
    return TileService(registry, cache, settings.max_blocks_per_request, settings.over_budget,
                       settings.max_scale, settings.max_age_s)


def create_app(region_dir: Path, settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    service = build_service(region_dir, settings)
    registry, cache, executor = service.registry, service.cache, service.registry.executor

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
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
    server_errors.install(app)
    # Read-only GET API: other local apps (the dashboard's map on another port) may call it
    # from the browser; ETag is exposed so clients can revalidate.
    from starlette.middleware.cors import CORSMiddleware

    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "HEAD"], expose_headers=["ETag"])

    from titiler.core.factory import ColorMapFactory, TMSFactory

    app.include_router(TMSFactory().router, tags=["Tiling schemes"])
    app.include_router(ColorMapFactory().router, tags=["Colormaps"])

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def layer_entry(request: Request, layer) -> dict[str, Any]:
        b = base(request)
        tms = get_tms("WebMercatorQuad")
        minzoom, maxzoom = zoom_range(registry, layer, tms)
        grid = registry.grid_of(layer)
        entry = {
            "id": layer.id, "title": layer.title, "kind": layer.kind, "units": layer.units,
            "description": layer.description, "synthetic": registry.synthetic, "computed": layer.computed,
            "formats": list(FORMATS), "minzoom": minzoom, "maxzoom": maxzoom,
            "bounds": list(grid.bounds_in("EPSG:4326")),
            "tiles": f"{b}/layers/{layer.id}/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.png",
            "tilejson": f"{b}/layers/{layer.id}/WebMercatorQuad/tilejson.json",
            "wmts": f"{b}/layers/{layer.id}/WMTSCapabilities.xml",
            "legend": f"{b}/layers/{layer.id}/legend",
        }
        if layer.computed:
            versions = [m.version for m in registry.models(layer.model_kind)]
            entry["models"] = versions
            try:
                entry["model"] = registry.model_info(layer).version
                entry["tiles"] += f"?model={entry['model']}"
            except SlidemapError:
                entry["model"] = None
        return entry

    # ---- service ------------------------------------------------------------------------------
    @app.get("/health", tags=["Service"])
    def health() -> dict[str, Any]:
        models = {}
        for kind in ("unet", "lsm"):
            found = registry.models(kind)
            models[kind] = [m.version for m in found]
        return {
            "status": "ok", "region": registry.region_name, "synthetic": registry.synthetic,
            "layers": len(registry.layers), "models": models, "cache": cache.stats(),
            "inference": {"pending_blocks": executor.pending, "max_pending_blocks": executor.max_pending,
                          "workers": settings.inference_workers},
        }

    @app.get("/layers", response_model=LayersResponse, tags=["Layers"])
    def layers(request: Request) -> dict[str, Any]:
        """Every layer of the region, with absolute URLs to discover its tiles, WMTS and legend."""
        return {"region": label, "synthetic": registry.synthetic,
                "layers": [layer_entry(request, lyr) for lyr in registry.layers.values()]}

    @app.get("/layers/{layer_id:path}/legend", tags=["Layers"])
    def legend(layer_id: str) -> dict[str, Any]:
        return registry.legend(registry.get(layer_id))

    @app.get("/layers/{layer_id:path}/{tms_id}/tilejson.json", tags=["Tiles"])
    def tilejson(
        request: Request,
        layer_id: str,
        tms_id: str,
        format: Annotated[Literal["png", "webp", "tif", "npy"], Query(description="tile format")] = "png",
        scale: Annotated[int, Query(ge=1, le=4, description="tile scale (@Nx)")] = 1,
        model: Annotated[str | None, Query(pattern=MODEL_VERSION, description="model version")] = None,
        rescale: Annotated[list[str] | None, Query(description="min,max per band")] = None,
        colormap_name: Annotated[str | None, Query(description="rio-tiler colormap name")] = None,
    ) -> dict[str, Any]:
        """TileJSON 3.0.0 with absolute tile URLs; computed layers pin the model version."""
        layer = registry.get(layer_id)
        tms = get_tms(tms_id)
        params = _render_params(rescale, colormap_name)
        service.validate(layer, format, scale, params)
        q = _tile_query(registry, layer, model, rescale, colormap_name)
        suffix = f"@{scale}x" if scale > 1 else ""
        url = f"{base(request)}/layers/{layer.id}/tiles/{tms.id}/{{z}}/{{x}}/{{y}}{suffix}.{format}"
        if q:
            url += "?" + urlencode(q)
        minzoom, maxzoom = zoom_range(registry, layer, tms)
        w, s, e, n = registry.grid_of(layer).bounds_in("EPSG:4326")
        synthetic = " SYNTHETIC data: generated, not observed." if registry.synthetic else ""
        return {
            "tilejson": "3.0.0",
            "name": layer.title,
            "description": layer.description + synthetic,
            "version": "1.0.0",
            "attribution": f"slidemap - {label}" + (" (SYNTHETIC)" if registry.synthetic else ""),
            "scheme": "xyz",
            "tiles": [url],
            "minzoom": minzoom,
            "maxzoom": maxzoom,
            "bounds": [w, s, e, n],
            "center": [(w + e) / 2, (s + n) / 2, min(maxzoom, max(minzoom, maxzoom - 2))],
            "legend": f"{base(request)}/layers/{layer.id}/legend",
            "tileSize": 256 * scale,
        }

    @app.get(
        "/layers/{layer_id:path}/tiles/{tms_id}/{z}/{x}/{y_fmt}",
        tags=["Tiles"],
        responses={200: {"content": {m: {} for m in FORMATS.values()}}, 304: {"description": "not modified"}},
        response_class=Response,
    )
    def tile(
        request: Request,
        layer_id: str,
        tms_id: str,
        z: Annotated[int, PathParam(ge=0, le=30)],
        x: Annotated[int, PathParam(ge=0)],
        y_fmt: Annotated[str, PathParam(description="`{y}.{format}` or `{y}@{N}x.{format}`")],
        model: Annotated[str | None, Query(pattern=MODEL_VERSION, description="model version")] = None,
        rescale: Annotated[list[str] | None, Query(description="min,max per band")] = None,
        colormap_name: Annotated[str | None, Query(description="rio-tiler colormap name")] = None,
    ) -> Response:
        """One tile. Outside the region: an empty transparent tile. ETag + If-None-Match -> 304."""
        m = _Y_RE.match(y_fmt)
        if not m:
            raise BadTileRequest(f"{y_fmt!r}: expected '{{y}}.{{format}}' or '{{y}}@{{N}}x.{{format}}', e.g. 12.png or 12@2x.webp")
        y, scale, fmt = int(m["y"]), int(m["scale"] or 1), m["fmt"]
        params = _render_params(rescale, colormap_name)
        result = service.tile(layer_id, tms_id, z, x, y, scale, fmt, params, model)
        headers = {"ETag": result.etag, "Cache-Control": result.cache_control, **result.headers}
        if registry.synthetic:
            headers["X-Slidemap-Synthetic"] = "true"  # tiles of generated, not observed, data
        inm = request.headers.get("if-none-match")
        if inm and (inm.strip() == "*" or result.etag in [t.strip() for t in inm.split(",")]):
            return Response(status_code=304, headers=headers)
        return Response(result.content, media_type=result.media_type, headers=headers)

    @app.get("/layers/{layer_id:path}/WMTSCapabilities.xml", tags=["OGC"], response_class=Response)
    def layer_wmts(
        request: Request,
        layer_id: str,
        tms: Annotated[Literal[SUPPORTED_TMS], Query(description="tile matrix set")] = "WebMercatorQuad",
        format: Annotated[Literal["png", "webp"], Query()] = "png",
        model: Annotated[str | None, Query(pattern=MODEL_VERSION)] = None,
        rescale: Annotated[list[str] | None, Query()] = None,
        colormap_name: Annotated[str | None, Query()] = None,
    ) -> Response:
        layer = registry.get(layer_id)
        params = _render_params(rescale, colormap_name)
        service.validate(layer, format, 1, params)
        q = _tile_query(registry, layer, model, rescale, colormap_name)
        xml = capabilities(registry, [(layer, q)], base(request), get_tms(tms), format)
        return Response(xml, media_type="application/xml")

    @app.get("/WMTSCapabilities.xml", tags=["OGC"], response_class=Response)
    def all_wmts(
        request: Request,
        tms: Annotated[Literal[SUPPORTED_TMS], Query(description="tile matrix set")] = "WebMercatorQuad",
    ) -> Response:
        """All layers in one capabilities document (computed layers pin their default model)."""
        tmsobj = get_tms(tms)
        parts = []
        for layer in registry.layers.values():
            try:
                q = _tile_query(registry, layer, None, None, None)
            except SlidemapError:
                continue  # e.g. a computed layer without a trained model
            parts.append((layer, q))
        xml = capabilities(registry, parts, base(request), tmsobj)
        return Response(xml, media_type="application/xml")

    @app.get("/point", response_model=PointResponse, tags=["Point"])
    def point(
        lon: Annotated[float, Query(ge=-180, le=180, description="longitude (WGS84)")],
        lat: Annotated[float, Query(ge=-90, le=90, description="latitude (WGS84)")],
        detection_model: Annotated[str | None, Query(description="detector version (default: newest)")] = None,
        susceptibility_model: Annotated[str | None, Query(description="susceptibility model version (default: newest)")] = None,
    ) -> dict[str, Any]:
        """Factor values and model outputs (computed on demand, one block each) at a location."""
        out: dict[str, Any] = {"lon": lon, "lat": lat, "inside": False, "synthetic": registry.synthetic,
                               "factors": {}, "units": {}, "notes": {}}
        if registry.factors_path.is_file():
            with rasterio.open(registry.factors_path) as src:
                xs, ys = transform_xy("EPSG:4326", src.crs, [lon], [lat])
                r, c = src.index(xs[0], ys[0])
                inside = 0 <= r < src.height and 0 <= c < src.width
                out["inside"] = inside
                vals = next(src.sample([(xs[0], ys[0])])) if inside else [np.nan] * src.count
                for name, v in zip(src.descriptions, vals, strict=False):
                    out["factors"][name] = float(v) if math.isfinite(float(v)) else None
            for layer in registry.layers.values():
                if layer.kind == "factor":
                    out["units"][layer.id.split("/", 1)[1]] = layer.units
        chosen = {"detection": detection_model, "susceptibility": susceptibility_model}
        for lid, prefix in (("detection", "detection"), ("susceptibility", "susceptibility")):
            layer = registry.layers.get(lid)
            if layer is None:
                continue
            try:
                version = registry.model_info(layer, chosen[prefix]).version
                out[f"{prefix}_model"] = version
                value = service.computed_value(layer, lon, lat, version)
                out[f"{prefix}_probability"] = value
                if lid == "susceptibility" and value is not None and "susceptibility/classes" in registry.layers:
                    cls_layer = registry.layers["susceptibility/classes"]
                    breaks = registry.class_breaks(cls_layer, version, budget=settings.max_blocks_per_request)
                    k = int(registry.classify(np.array([value], dtype=np.float32), breaks)[0])
                    out["susceptibility_class"] = k
                    out["susceptibility_class_name"] = cls_layer.classes.get(k)
            except SlidemapError as exc:
                out["notes"][prefix] = str(exc)
        return out

    # ---- map page -----------------------------------------------------------------------------
    from starlette.templating import Jinja2Templates

    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.mount("/vendor/leaflet", StaticFiles(directory=_leaflet_dir()), name="leaflet")

    @app.get("/", response_class=HTMLResponse, tags=["Map"])
    def map_page(request: Request) -> HTMLResponse:
        """An offline map of every layer (Leaflet served by this app, no CDN)."""
        return templates.TemplateResponse(
            request, "map.html", {"title": f"slidemap - {label}", "synthetic": registry.synthetic, "region": label},
        )

    _install_docs(app)

    @app.get("/map", include_in_schema=False)
    def map_alias(request: Request) -> HTMLResponse:
        return map_page(request)

    return app


def _render_params(rescale: list[str] | None, colormap_name: str | None) -> RenderParams:
    if colormap_name is not None and colormap_name not in default_cmap.list():
        raise BadTileRequest(f"unknown colormap_name {colormap_name!r}; GET /colorMaps lists them")
    return RenderParams(parse_rescale(rescale), colormap_name)


def _tile_query(registry: LayerRegistry, layer, model, rescale, colormap_name) -> list[tuple[str, str]]:
    q: list[tuple[str, str]] = []
    if layer.computed:
        q.append(("model", registry.model_info(layer, model).version))
    for r in rescale or []:
        q.append(("rescale", r))
    if colormap_name:
        q.append(("colormap_name", colormap_name))
    return q


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
        root = str(request.base_url).rstrip("/")
        if have_swagger:
            return get_swagger_ui_html(
                openapi_url=f"{root}/openapi.json", title=f"{app.title} - API docs",
                swagger_js_url=f"{root}/vendor/swagger-ui/swagger-ui-bundle.js",
                swagger_css_url=f"{root}/vendor/swagger-ui/swagger-ui.css",
                swagger_favicon_url=f"{root}/vendor/swagger-ui/favicon-32x32.png",
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
