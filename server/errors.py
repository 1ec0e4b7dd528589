"""The one place that turns errors into HTTP answers: 4xx JSON for anything a client can fix.

Body: ``{"detail": "<one-line message>", "status": <code>}`` (:class:`ErrorBody`, also what the
OpenAPI schema documents for every error status). slidemap errors map through their
``http_status`` (400 bad input, 404 unknown layer/model/TMS/tile, 409 not built, unreadable
input or bad model, 422 over the compute budget); FastAPI's parameter validation is flattened
into one line (422); a full inference queue, a compute timeout or an input that changed
mid-request are 503 with ``Retry-After``. Unexpected errors are logged with their traceback and
answered as a 500 JSON without it.

No answer names a path of the server's file system: every message goes through a
:class:`Scrubber` that writes region paths relative to the region folder and shortens any other
absolute path to its file name.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from rio_tiler.errors import InvalidColorMapName, RioTilerError, TileOutsideBounds
from starlette.exceptions import HTTPException as StarletteHTTPException

from slidemap.compute.maps.blocks import ComputeCancelled, ComputeTimeout, InputChanged, QueueFull
from slidemap.compute.models.runtime import OutOfMemory
from slidemap.errors import BuildError, ModelError, SlidemapError

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


class StalledBody(SlidemapError):
    """A request body that stopped arriving: the connection is not held open for it."""

    http_status = 408


class ClientGone(SlidemapError):
    """The client closed the connection before its body arrived: nobody reads the answer, and it is
    not a server fault (no 500, no traceback in the log)."""

    http_status = 400


# The statuses of the error types below the web layer (which carry none), most specific first.
STATUS_OF_TYPE: tuple[tuple[type[SlidemapError], int], ...] = (
    (OutOfMemory, 503),  # the device is full now; a retry may find it free
    (BuildError, 409),  # not built yet, or an input that cannot be read: re-run prepare
    (ModelError, 409),  # a model that cannot be used with these inputs
)


def http_status(exc: SlidemapError) -> int:
    """The one mapping from a slidemap error to its HTTP status (400 unless listed)."""
    own = getattr(type(exc), "http_status", None)
    if own is not None:
        return int(own)
    return next((status for kind, status in STATUS_OF_TYPE if isinstance(exc, kind)), 400)


class ErrorBody(BaseModel):
    """Every error answer of this server."""

    detail: str = Field(description="one line: what is wrong and how to fix it")
    status: int = Field(description="the HTTP status, repeated")


ERROR_STATUSES = {
    400: "bad parameter value",
    404: "no such layer, model, tile matrix set or tile",
    408: "a request body that stopped arriving",
    409: "not built yet, an input that cannot be read (re-run prepare), or a model that cannot be used",
    416: "a Range header beyond the file",
    422: "parameters that do not match this schema",
    503: "busy (inference queue full, compute timeout) or an input changing; retry after Retry-After seconds",
}


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI ``responses`` entries for ``statuses``, each with the :class:`ErrorBody` schema."""
    out: dict[int | str, dict] = {}
    for code in statuses:
        entry: dict = {"model": ErrorBody, "description": ERROR_STATUSES.get(code, "error")}
        if code == 503:
            entry["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
        out[code] = entry
    return out


# Absolute file-system paths (not URL paths such as /layers/...): a path starting at a usual
# top-level folder, at the start of the text or after a space, quote, bracket, '=' or ','.
_FS_ROOTS = ("tmp", "home", "usr", "opt", "var", "work", "root", "srv", "mnt", "private", "Users", "etc",
             "data", "proc", "dev", "sys", "media", "run", "lib", "lib64", "bin", "sbin", "nix", "app",
             "workspace", "scratch", "build", "cache")
_ABS_PATH = re.compile(r"(?<![^\s'\"(\[=,])/(?:" + "|".join(_FS_ROOTS) + r")(?:/[\w.@+~-]+)*/([\w.@+~-]*)")


class Scrubber:
    """Rewrites messages so that no absolute server path leaves the server.

    Paths under the region folder become relative to it (``build/factors.tif``); the cache
    folder becomes ``<cache>``; any other absolute path keeps only its last component.
    """

    def __init__(self, region_dir: Path, cache_dir: Path | None = None) -> None:
        roots: list[tuple[str, str]] = []
        for path, label in ((cache_dir, "<cache>"), (region_dir, "")):
            if path is None:
                continue
            for variant in {str(Path(path)), str(Path(path).resolve()), os.path.realpath(path)}:
                roots.append((variant, label))
        # Longest first, so a cache folder inside the region becomes <cache>, not cache/...
        self.roots = sorted(roots, key=lambda r: -len(r[0]))
        self.prefixes = [sys.prefix, sys.base_prefix, tempfile.gettempdir(), str(Path.home())]

    def __call__(self, text: str) -> str:
        for root, label in self.roots:
            if root and root != "/":
                text = text.replace(root + "/", label + "/" if label else "")
                text = text.replace(root, label or "REGION")
        return _ABS_PATH.sub(lambda m: m.group(1) or "<path>", text)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path"))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "invalid parameters: " + "; ".join(parts)


def install(app: FastAPI, scrub: Scrubber | None = None) -> None:
    clean = scrub or (lambda text: _ABS_PATH.sub(lambda m: m.group(1) or "<path>", text))

    def _json(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"detail": clean(detail), "status": status}, status_code=status, headers=headers)

    @app.exception_handler(SlidemapError)
    async def _slidemap(request: Request, exc: SlidemapError) -> JSONResponse:
        status = http_status(exc)
        log.info("%s %s -> %d: %s", request.method, request.url.path, status, exc)
        return _json(status, str(exc))

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

    @app.exception_handler(InputChanged)
    async def _changed(request: Request, exc: InputChanged) -> JSONResponse:
        log.info("%s %s -> 503: %s", request.method, request.url.path, exc)
        return _json(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(ComputeCancelled)
    async def _cancelled(request: Request, exc: ComputeCancelled) -> JSONResponse:
        # The client went away (or the server is stopping); nobody reads this answer.
        log.debug("%s %s -> 503: %s", request.method, request.url.path, exc)
        return _json(503, str(exc), {"Retry-After": "1"})

    @app.exception_handler(InvalidColorMapName)
    async def _cmap(request: Request, exc: InvalidColorMapName) -> JSONResponse:
        return _json(400, str(exc))

    @app.exception_handler(TileOutsideBounds)
    async def _outside(request: Request, exc: TileOutsideBounds) -> JSONResponse:
        return _json(404, str(exc))

    @app.exception_handler(OSError)
    async def _oserror(request: Request, exc: OSError) -> JSONResponse:
        # A file the server needs went away or failed under it: an operator's problem to fix,
        # answered as 409 with the file named (relative), never a 500 with a traceback.
        log.warning("%s %s -> 409: %s", request.method, request.url.path, exc)
        name = Path(exc.filename).name if getattr(exc, "filename", None) else "a server file"
        return _json(409, f"{name}: cannot be read ({exc.strerror or type(exc).__name__}); "
                          "re-run `slidemap prepare` on this region or check the server's cache folder")

    @app.exception_handler(RioTilerError)
    async def _riotiler(request: Request, exc: RioTilerError) -> JSONResponse:
        log.warning("%s %s -> 400: %s", request.method, request.url.path, exc)
        return _json(400, f"{type(exc).__name__}: {exc}")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s -> 500", request.method, request.url.path)
        return _json(500, f"internal error ({type(exc).__name__}); see the server log")
