"""The one place that turns errors into HTTP answers: 4xx JSON for anything a client can fix.

Body: ``{"detail": "<one-line message>", "status": <code>}``. slidemap errors map through their
``http_status`` (400 bad input, 404 unknown layer/model/TMS, 409 not built or bad model, 422
over the compute budget); FastAPI's parameter validation is flattened into one line (422); a
full inference queue is 503 with ``Retry-After``. Unexpected errors are logged with their
traceback and answered as a 500 JSON without it.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from rio_tiler.errors import InvalidColorMapName, RioTilerError, TileOutsideBounds
from starlette.exceptions import HTTPException as StarletteHTTPException

from slidemap.compute.blocks import ComputeTimeout, QueueFull
from slidemap.errors import SlidemapError

log = logging.getLogger("slidemap.server")


# The server's own error types; each carries its HTTP status for the handlers below.
class BadTileRequest(SlidemapError):
    http_status = 400


class NotFound(SlidemapError):
    http_status = 404


class LayerNotFound(NotFound):
    """A layer id that is not in the region's registry."""


class ModelNotFound(NotFound):
    """A model version that is not among the region's artefacts."""


class OverBudget(SlidemapError):
    http_status = 422


def _json(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "status": status}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path"))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "invalid parameters: " + "; ".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(SlidemapError)
    async def _slidemap(request: Request, exc: SlidemapError) -> JSONResponse:
        log.info("%s %s -> %d: %s", request.method, request.url.path, exc.http_status, exc)
        return _json(exc.http_status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        msg = _validation_message(exc)
        log.info("%s %s -> 422: %s", request.method, request.url.path, msg)
        return _json(422, msg)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint {request.url.path!r}; see /docs"
        log.info("%s %s -> %d: %s", request.method, request.url.path, exc.status_code, detail)
        return _json(exc.status_code, detail, getattr(exc, "headers", None))

    @app.exception_handler(QueueFull)
    async def _queue(request: Request, exc: QueueFull) -> JSONResponse:
        log.warning("%s %s -> 503: %s", request.method, request.url.path, exc)
        return _json(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(ComputeTimeout)
    async def _timeout(request: Request, exc: ComputeTimeout) -> JSONResponse:
        log.warning("%s %s -> 503: %s", request.method, request.url.path, exc)
        return _json(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(InvalidColorMapName)
    async def _cmap(request: Request, exc: InvalidColorMapName) -> JSONResponse:
        return _json(400, str(exc))

    @app.exception_handler(TileOutsideBounds)
    async def _outside(request: Request, exc: TileOutsideBounds) -> JSONResponse:
        return _json(404, str(exc))

    @app.exception_handler(RioTilerError)
    async def _riotiler(request: Request, exc: RioTilerError) -> JSONResponse:
        log.warning("%s %s -> 400: %s", request.method, request.url.path, exc)
        return _json(400, f"{type(exc).__name__}: {exc}")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s -> 500", request.method, request.url.path)
        return _json(500, f"internal error ({type(exc).__name__}); see the server log")
