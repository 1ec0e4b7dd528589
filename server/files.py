"""Files sent as they are (downloads, report files), with the server's JSON errors for a bad Range.

Starlette's ``FileResponse`` answers a malformed or unsatisfiable ``Range`` header itself, in plain
text; every other error of this server is a JSON :class:`~slidemap.server.errors.ErrorBody`. So the
header is checked first, by Starlette's own parser, and a bad one becomes an ``HTTPException`` that
the server's handler turns into JSON (416 keeps its ``Content-Range``).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import HTTPException, Request
from fastapi.responses import FileResponse
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable


def file_answer(request: Request, path: Path, media_type: str, filename: str | None = None) -> FileResponse:
    """``path`` as a :class:`FileResponse`, after its ``Range`` header (if any) parses for this file."""
    http_range = request.headers.get("range")
    if http_range is not None and request.method in ("GET", "HEAD"):
        try:
            size = path.stat().st_size
        except OSError:
            size = None  # FileResponse says what is wrong with the file
        if size is not None:
            shown = http_range if len(http_range) <= 40 else http_range[:40] + "..."
            try:
                # Starlette's parser (the one FileResponse runs next), so both agree on what is valid
                FileResponse._parse_range_header(http_range, size)
            except MalformedRangeHeader as exc:
                raise HTTPException(400, f"Range header {shown!r}: {exc.content.removeprefix('Range header: ')}") from None
            except RangeNotSatisfiable:
                raise HTTPException(416, f"Range header {shown!r}: beyond the file's {size} bytes",
                                    headers={"Content-Range": f"bytes */{size}"}) from None
    return FileResponse(path, media_type=media_type, filename=filename)
