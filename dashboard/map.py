"""The map page: the tile server's own map beside the evidence, and a point form.

One map for slidemap: the tile server's page (``GET /map``: Leaflet served by the server from the
installed ``xstatic-leaflet``, nothing from a CDN) in an iframe, with the sidebar's model versions
pinned as ``?lsm=<version>&unet=<version>``. The page loads its tiles and ``/point`` answers from
its own server (same origin: no CORS needed), so a map fix lands once, for both.

Around it the dashboard asks the server itself: ``GET /layers`` and each layer's TileJSON (with
``?model=`` for the chosen version) say which layers can be shown and which cannot yet (no trained
model, an unknown version), and a point form asks ``/point`` from Python.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin

from slidemap.dashboard.client import ServerFailed, ServerUnavailable, get_json

MAP_HEIGHT_PX = 620


@dataclass(frozen=True)
class MapLayer:
    """One tile layer as the page lists it."""

    id: str
    title: str
    kind: str
    units: str | None
    tiles: str
    bounds: tuple[float, float, float, float] | None = None
    minzoom: int = 0
    maxzoom: int = 22
    base: bool = False
    model_kind: str | None = None


# --------------------------------------------------------------------------------------------
# Talking to the tile server (the client: slidemap.dashboard.client)


def with_query(url: str, extra: dict[str, str]) -> str:
    """Add query parameters to a URL (or a tile template) without touching ``{z}/{x}/{y}``."""
    if not extra:
        return url
    base, _, query = url.partition("?")
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in extra]
    pairs.extend(extra.items())
    # safe="{}," keeps template braces and titiler's rescale commas readable; Leaflet fills braces.
    return f"{base}?{urlencode(pairs, safe='{},')}"


def model_kind_of(layer: dict[str, Any]) -> str | None:
    """Which artefact kind computes a layer: ``unet`` for detection, ``lsm`` for susceptibility."""
    text = f"{layer.get('id', '')} {layer.get('kind', '')}".lower()
    if "susceptib" in text:
        return "lsm"
    if "detect" in text:
        return "unet"
    return None


def _is_base(layer: dict[str, Any]) -> bool:
    text = f"{layer.get('id', '')} {layer.get('kind', '')}".lower()
    return "imagery" in text or layer.get("kind") == "basemap"


def discover_layers(
    server: str, versions: dict[str, str] | None = None
) -> tuple[list[MapLayer], list[tuple[str, str]]]:
    """The server's layers with their TileJSON; problems with single layers come back as messages.

    Each problem is ``(level, text)``: ``info`` for a layer the server cannot show yet (409/404: no
    trained model, unknown version), ``warning`` for anything else.

    Raises ServerUnavailable / ServerFailed when ``/layers`` itself fails: then there is no map.
    """
    server = server.rstrip("/")
    versions = versions or {}
    listing = get_json(f"{server}/layers")
    if isinstance(listing, dict):  # tolerate {"layers": [...]}
        listing = listing.get("layers", [])
    if not isinstance(listing, list):
        raise ServerFailed(f"the tile server's {server}/layers is not a list of layers")
    layers: list[MapLayer] = []
    problems: list[tuple[str, str]] = []
    entries = []
    for raw in listing:
        if isinstance(raw, dict) and "id" in raw:
            entries.append(raw)
        else:
            problems.append(("warning", f"skipped an entry of /layers without an id: {str(raw)[:80]}"))
    # TileJSON requests in parallel: twenty layers one after the other would add up.
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda raw: _layer(server, raw, versions), entries))
    for layer, problem in results:
        if layer is not None:
            layers.append(layer)
        if problem is not None:
            problems.append(problem)
    return layers, problems


def _layer(server: str, raw: dict[str, Any], versions: dict[str, str]) -> tuple[MapLayer | None, tuple[str, str] | None]:
    """One /layers entry resolved through its TileJSON, or the reason it cannot be shown."""
    lid = str(raw["id"])
    mkind = model_kind_of(raw)
    extra = {"model": versions[mkind]} if mkind and versions.get(mkind) else {}
    tilejson_url = raw.get("tilejson")
    if not tilejson_url:
        return None, ("warning", f"layer {lid}: the server gives no TileJSON URL")
    tilejson_url = with_query(urljoin(server + "/", str(tilejson_url)), extra)
    try:
        tilejson = get_json(tilejson_url)
        tiles = tilejson["tiles"][0]
    except ServerFailed as exc:
        if exc.status in (404, 409):  # no trained model yet, unknown version: expected states
            return None, ("info", f"`{lid}`: {exc.detail}")
        return None, ("warning", f"layer {lid} not shown: {exc}")
    except ServerUnavailable as exc:
        return None, ("warning", f"layer {lid} not shown: {exc}")
    except (KeyError, IndexError, TypeError):
        return None, ("warning", f"layer {lid}: its TileJSON has no tiles URL")
    bounds = tilejson.get("bounds")
    layer = MapLayer(
        id=lid,
        title=str(raw.get("title") or lid),
        kind=str(raw.get("kind") or ""),
        units=raw.get("units"),
        tiles=with_query(urljoin(server + "/", str(tiles)), extra),
        bounds=tuple(float(b) for b in bounds) if isinstance(bounds, list) and len(bounds) == 4 else None,
        minzoom=int(tilejson.get("minzoom", 0)),
        maxzoom=int(tilejson.get("maxzoom", 22)),
        base=_is_base(raw),
        model_kind=mkind,
    )
    return layer, None


def query_point(server: str, lon: float, lat: float, versions: dict[str, str] | None = None) -> Any:
    """The server's ``/point`` answer for one spot (all factors and model outputs there)."""
    params: dict[str, Any] = {"lon": lon, "lat": lat}
    params.update({k: v for k, v in _model_params(versions).items()})
    return get_json(f"{server.rstrip('/')}/point", params=params)


POINT_PARAMS = {"unet": "detection_model", "lsm": "susceptibility_model"}


def _model_params(versions: dict[str, str] | None) -> dict[str, str]:
    """``/point`` query parameters naming the chosen versions (named as the answer's own keys).

    A server that does not know them ignores them and answers with its default models; the answer's
    ``detection_model`` / ``susceptibility_model`` say which versions it used.
    """
    return {POINT_PARAMS[k]: v for k, v in (versions or {}).items() if v and k in POINT_PARAMS}


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested JSON as ``(dotted key, text)`` rows for a table."""
    rows: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            rows.extend(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, item in enumerate(value):
            rows.extend(flatten(item, f"{prefix}[{i}]"))
    else:
        if isinstance(value, float):
            text = f"{value:.6g}"
        elif value is None:
            text = "no data"
        else:
            text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        rows.append((prefix or "value", text))
    return rows


def union_bounds(layers: list[MapLayer]) -> tuple[float, float, float, float] | None:
    boxes = [layer.bounds for layer in layers if layer.bounds]
    if not boxes:
        return None
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def map_url(server: str, versions: dict[str, str] | None = None) -> str:
    """The server's map page with the chosen model versions pinned (``?lsm=...&unet=...``)."""
    pins = {k: v for k, v in (versions or {}).items() if v and k in POINT_PARAMS}
    return f"{server.rstrip('/')}/map" + (f"?{urlencode(pins)}" if pins else "")


# --------------------------------------------------------------------------------------------
# The Streamlit page


def render(server: str, versions: dict[str, str], evidence: Any = None) -> None:
    """Draw the map page, with ``evidence()`` (the models' scores and figures) beside the map;
    every failure becomes a message, never a traceback."""
    import streamlit as st

    st.header("Map")
    try:
        layers, problems = discover_layers(server, versions)
    except ServerUnavailable as exc:
        st.error(
            f"The tile server is not reachable ({exc}). Start it with `slidemap serve REGION_DIR` "
            "(or give the right address with `slidemap dashboard REGION_DIR --server URL`), then reload."
        )
        return
    except ServerFailed as exc:
        st.error(f"The tile server could not list its layers: {exc}. See the server's log.")
        return
    for level, problem in problems:
        if level != "info":
            st.warning(problem)
    not_yet = [problem for level, problem in problems if level == "info"]
    if not_yet:
        st.info("Layers the server cannot show yet:\n" + "\n".join(f"- {p}" for p in not_yet))
    if not layers:
        st.warning("The tile server lists no layers that can be shown; has `slidemap prepare` run on the region?")
        return
    chosen = ", ".join(f"{k} {v}" for k, v in versions.items() if v) or "the server's default models"
    st.caption(
        f"{len(layers)} layers from {server} (showing {chosen}). Pick layers in the map's layer list; "
        "click the map for the values at a spot."
    )
    if evidence is not None:
        map_col, evidence_col = st.columns([3, 2])
        with map_col:
            st.iframe(map_url(server, versions), height=MAP_HEIGHT_PX)
        with evidence_col:
            evidence()
    else:
        st.iframe(map_url(server, versions), height=MAP_HEIGHT_PX)
    point_col, layers_col = st.columns([1, 2])
    with point_col:
        _point_form(server, versions, union_bounds(layers))
    with layers_col:
        st.subheader("Layers")
        st.dataframe(
            [{"layer": layer.title, "kind": layer.kind, "units": layer.units or "", "id": layer.id} for layer in layers],
            hide_index=True,
        )


def _point_form(server: str, versions: dict[str, str], bounds: tuple[float, float, float, float] | None) -> None:
    import streamlit as st

    st.subheader("Values at a point")
    lon0, lat0 = ((bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2) if bounds else (0.0, 0.0)
    with st.form("point_form"):
        lon = st.number_input("longitude", value=float(lon0), format="%.6f", key="point_lon")
        lat = st.number_input("latitude", value=float(lat0), format="%.6f", key="point_lat")
        asked = st.form_submit_button("Ask the server")
    if not asked:
        return
    try:
        answer = query_point(server, lon, lat, versions)
    except (ServerUnavailable, ServerFailed) as exc:
        st.error(f"No values for {lat:.5f}, {lon:.5f}: {exc}")
        return
    st.table([{"value": key, "at this point": text} for key, text in flatten(answer)])
