"""The dashboard's only way to the region: HTTP requests to the tile server.

Every page reads through these two calls (JSON, and bytes for figures), so a dashboard runs on a
machine that has no copy of the region: the layers, the models, the reports and their figures and
the region's outputs all come from the server's routes. Failures become one-line messages in two
kinds: the server cannot be reached, or it answered with an error or something unexpected.
"""

from __future__ import annotations

from typing import Any

import httpx

from slidemap.errors import SlidemapError

TIMEOUT_S = 10.0
MAX_BYTES = 50 * 1024 * 1024  # a figure or a report; more is not something a page shows


class ServerUnavailable(SlidemapError):
    """The tile server cannot be reached (not started, wrong URL, timed out)."""


class ServerFailed(SlidemapError):
    """The tile server answered with an error status or something that is not the expected JSON."""

    def __init__(self, message: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail or message


def _get(url: str, params: dict[str, Any] | None, timeout: float) -> httpx.Response:
    try:
        response = httpx.get(url, params=params, timeout=timeout, follow_redirects=True)
    except httpx.TimeoutException as exc:
        raise ServerUnavailable(f"no answer from {url} within {timeout:g} s") from exc
    except httpx.HTTPError as exc:
        raise ServerUnavailable(f"no answer from {url} ({type(exc).__name__}: {exc})") from exc
    if response.status_code >= 400:
        detail = _error_detail(response)
        raise ServerFailed(
            f"the tile server answered {response.status_code} to GET {url}: {detail}",
            status=response.status_code,
            detail=f"{detail} ({response.status_code})",
        )
    return response


def get_json(url: str, params: dict[str, Any] | None = None, timeout: float = TIMEOUT_S) -> Any:
    """GET ``url`` and return its JSON; raise ServerUnavailable / ServerFailed with one-line messages."""
    response = _get(url, params, timeout)
    try:
        return response.json()
    except ValueError as exc:
        raise ServerFailed(f"the tile server's answer to GET {url} is not JSON") from exc


def get_bytes(url: str, timeout: float = TIMEOUT_S) -> bytes:
    """GET ``url`` and return its body (a figure, a file); at most :data:`MAX_BYTES`."""
    response = _get(url, None, timeout)
    if len(response.content) > MAX_BYTES:
        raise ServerFailed(f"the tile server's answer to GET {url} is larger than {MAX_BYTES} bytes")
    return response.content


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip().splitlines()
        return text[0][:200] if text else response.reason_phrase
    if isinstance(body, dict):
        for key in ("detail", "message", "error"):
            if key in body:
                return str(body[key])[:300]
    return str(body)[:300]
