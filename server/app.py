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

# No `from __future__ import annotations` here: FastAPI evaluates the route annotations of the factory.
import contextlib
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from slidemap.server import errors as server_errors
from slidemap.server.background import DeviceProbe
from slidemap.server.errors import ErrorBody
from slidemap.server.factory import TileServerFactory
from slidemap.server.layers import LayerRegistry
from slidemap.server.service import ServerSettings, build_service

__all__ = ["ServerSettings", "create_app"]

log = logging.getLogger("slidemap.server")
HERE = Path(__file__).parent


def host_name(host: str) -> str | None:
    """The name part of a Host header (``[::1]:8000`` -> ``::1``); None when it is not a host."""
    host = host.strip()
    if not host or any(c in host for c in "/\\@?#\"'<> \t"):
        return None
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1 :]
        if end <= 0 or (rest and not rest.startswith(":")):
            return None
        name, port = host[1:end], rest[1:]
    else:
        name, _, port = host.partition(":")
    # the port goes into TileJSON and WMTS links: only a real one (1-65535)
    if port and not (port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536):
        return None
    return name.lower() or None


class RequestPolicy:
    """ASGI middleware: a Host header from the allowed list and a bounded URL, or a JSON 4xx."""

    # What any route may answer because of this policy (the schema lists them for every operation).
    STATUSES = {400: "a Host header this server does not serve", 414: "a URL longer than the server's limit"}

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


class HeadAsGet:
    """ASGI middleware: HEAD is answered as GET without the body. FastAPI routes take only the
    methods they declare (GET), but tile clients and caches send HEAD to check a URL or an ETag."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}  # the GET's headers (Content-Length too), no body
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


# ---- the app -----------------------------------------------------------------------------------
def create_app(region_dir: Path, settings: ServerSettings | None = None) -> FastAPI:
    """The tile server for a region: :class:`TileServerFactory`'s routes with the request policy,
    the JSON error handlers, CORS when asked, static files, the offline API docs and the schema."""
    settings = settings or ServerSettings()
    service = build_service(region_dir, settings)
    registry, executor = service.registry, service.registry.executor
    device = DeviceProbe()
    allowed_hosts = tuple(settings.allowed_hosts)
    if settings.public_url:
        public_host = urlsplit(settings.public_url).hostname
        if public_host:
            allowed_hosts += (public_host,)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.report_device:
            device.start()
        yield
        executor.shutdown()

    app = FastAPI(
        title=f"slidemap tile server - {registry.label}",
        description=(
            "Landslide inventory and susceptibility tiles with on-demand model compute."
            + (" **SYNTHETIC data**: every layer of this region is generated, not observed." if registry.synthetic else "")
        ),
        version="1",
        lifespan=lifespan,
        docs_url=None,  # replaced below: FastAPI's default docs page loads Swagger UI from a CDN
        redoc_url=None,
    )
    from starlette.templating import Jinja2Templates

    factory = TileServerFactory(service=service, settings=settings, device=device,
                                templates=Jinja2Templates(directory=str(HERE / "templates")))
    app.state.registry = registry
    app.state.cache = service.cache
    app.state.service = service
    app.state.executor = executor
    app.state.settings = settings
    app.state.device = device
    server_errors.install(app, factory.scrub)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "HEAD"],
                           expose_headers=["ETag"])
    app.add_middleware(RequestPolicy, allowed_hosts=allowed_hosts, max_url_length=settings.max_url_length)
    app.add_middleware(HeadAsGet)
    app.include_router(factory.router)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.mount("/vendor/leaflet", StaticFiles(directory=_leaflet_dir()), name="leaflet")
    _install_docs(app)
    _install_openapi(app, registry)
    return app


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
                for code, why in RequestPolicy.STATUSES.items():
                    op.setdefault("responses", {}).setdefault(str(code), {"description": why})
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
