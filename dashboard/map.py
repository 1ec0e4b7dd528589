"""The map page: the tile server's layers in an offline Leaflet map, and point queries.

Route chosen: Leaflet's own JS and CSS, read from the installed ``xstatic-leaflet`` package and
inlined (its CSS images as data URIs) into one HTML page shown with
``st.iframe`` (the successor of ``streamlit.components.v1.html``: an iframe with that page as srcdoc). Nothing is loaded from a CDN, so the map works with no internet:
the only network traffic of the map is tiles and ``/point`` answers from our tile server. folium /
streamlit-folium load Leaflet from CDNs by default, and a custom component would need a JS build step.

Layers are discovered, not guessed: ``GET /layers`` on the server, then each layer's TileJSON (its
``tiles[0]`` template, ``bounds``, zoom range). A model version chosen in the sidebar is passed to
the server as ``?model=<version>`` on the layers that the model computes.

Clicking the map asks the server's ``/point`` from the page's JavaScript directly (the tile server
must send CORS headers for that; a loopback page on another port is another origin). The page also
has a point form that asks ``/point`` from Python, which needs no CORS and is what the tests drive.
"""

from __future__ import annotations

import base64
import functools
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin

import httpx

from slidemap.dashboard.client import ServerFailed, ServerUnavailable, get_json

LEGEND_TIMEOUT_S = 30.0
LEGEND_TTL_S = 120.0
MAP_HEIGHT_PX = 620

# Fallback legend for the five susceptibility classes, only used when the server gives no legend of
# its own; the names are the paper's (very low .. very high by Jenks natural breaks).
CLASS_NAMES = ("very low", "low", "moderate", "high", "very high")


@dataclass(frozen=True)
class MapLayer:
    """One tile layer as the map page needs it."""

    id: str
    title: str
    kind: str
    units: str | None
    tiles: str
    bounds: tuple[float, float, float, float] | None = None
    minzoom: int = 0
    maxzoom: int = 22
    base: bool = False
    legend: list[dict[str, str]] = field(default_factory=list)
    legend_image: str | None = None
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


def _legend_entries(raw: Any) -> list[dict[str, str]]:
    """Normalise a legend given as JSON into ``[{label, color}]``; unknown shapes give []."""
    if isinstance(raw, dict):
        for key in ("entries", "classes", "items", "legend"):
            if key in raw:
                entries = _legend_entries(raw[key])
                return _with_breaks(entries, raw.get("breaks"))
        if isinstance(raw.get("stops"), list):  # continuous colormap: [[value, colour], ...]
            units = f" {raw['units']}" if raw.get("units") and raw.get("units") != "class" else ""
            stops = [s for s in raw["stops"] if isinstance(s, (list, tuple)) and len(s) == 2]
            # five swatches (first and last included) are enough to read a ramp
            keep = sorted({round(i * (len(stops) - 1) / 4) for i in range(5)}) if len(stops) > 5 else range(len(stops))
            picked = [stops[i] for i in keep]
            return [e for e in (_entry(f"{v:.3g}{units}" if isinstance(v, (int, float)) else v, c)
                                for v, c in picked) if e]
        if raw.get("type") in ("rgb", "continuous", "categorical"):
            return []
        # {"1": "#rrggbb", ...} or {"very low": [r, g, b, a], ...}
        return [e for e in (_entry(k, v) for k, v in raw.items()) if e]
    if isinstance(raw, list):
        out = []
        for item in raw:
            if isinstance(item, dict):
                label = item.get("label") or item.get("name") or item.get("title") or item.get("value")
                colour = item.get("color") or item.get("colour") or item.get("rgba") or item.get("rgb")
                entry = _entry(label, colour)
                if entry:
                    out.append(entry)
        return out
    return []


def _with_breaks(entries: list[dict[str, str]], breaks: Any) -> list[dict[str, str]]:
    """Class labels with their probability ranges when the server knows the (upper) class breaks."""
    if not isinstance(breaks, list) or not breaks or not all(isinstance(b, (int, float)) for b in breaks):
        return entries
    uppers = breaks[: len(entries)]
    if len(uppers) == len(entries):  # the last upper bound is the maximum: say "> previous" instead
        uppers = uppers[:-1]
    if len(uppers) != len(entries) - 1:
        return entries
    out = []
    for i, entry in enumerate(entries):
        bound = f"≤ {uppers[i]:.3g}" if i < len(uppers) else f"> {uppers[-1]:.3g}"
        out.append({**entry, "label": f"{entry['label']} ({bound})"})
    return out


def _entry(label: Any, colour: Any) -> dict[str, str] | None:
    css = _css_colour(colour)
    if label is None or css is None:
        return None
    return {"label": str(label), "color": css}


def _css_colour(colour: Any) -> str | None:
    if isinstance(colour, str) and colour.strip():
        return colour.strip()
    if isinstance(colour, (list, tuple)) and len(colour) in (3, 4) and all(isinstance(c, (int, float)) for c in colour):
        r, g, b = (int(c) for c in colour[:3])
        a = (colour[3] / 255.0) if len(colour) == 4 and colour[3] > 1 else (colour[3] if len(colour) == 4 else 1)
        return f"rgba({r},{g},{b},{a:.3g})"
    return None


_LEGENDS: dict[str, tuple[float, list[dict[str, str]], str | None]] = {}


def _fetch_legend(server: str, raw: Any, extra: dict[str, str] | None = None) -> tuple[list[dict[str, str]], str | None]:
    """A layer's legend: inline JSON, a URL to JSON, or a URL to an image (shown as is).

    Legends fetched over HTTP are kept for LEGEND_TTL_S per URL (the model version is in the URL):
    the server may need seconds to derive class breaks, and every widget click reruns the page.
    """
    if isinstance(raw, (dict, list)):
        return _legend_entries(raw), None
    if not isinstance(raw, str) or not raw:
        return [], None
    url = with_query(urljoin(server + "/", raw), extra or {})
    cached = _LEGENDS.get(url)
    if cached and time.monotonic() - cached[0] < LEGEND_TTL_S:
        return cached[1], cached[2]
    try:
        response = httpx.get(url, timeout=LEGEND_TIMEOUT_S)
    except httpx.HTTPError:
        return [], None
    if response.status_code >= 400:
        return [], None
    if response.headers.get("content-type", "").startswith("image/"):
        entries, image = [], url
    else:
        try:
            entries, image = _legend_entries(response.json()), None
        except ValueError:
            return [], None
    _LEGENDS[url] = (time.monotonic(), entries, image)
    return entries, image


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
    # TileJSON and legend requests in parallel: a legend of computed classes may take the server
    # seconds (it derives the breaks), and twenty layers one after the other would add up.
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda raw: _layer(server, raw, versions), entries))
    for layer, problem in results:
        if layer is not None:
            layers.append(layer)
        if problem is not None:
            problems.append(problem)
    return layers, problems


def _layer(server: str, raw: dict[str, Any], versions: dict[str, str]) -> tuple[MapLayer | None, tuple[str, str] | None]:
    """One /layers entry resolved through its TileJSON (and legend), or the reason it cannot be shown."""
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
    legend, legend_image = _fetch_legend(server, raw.get("legend"), extra)
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
        legend=legend,
        legend_image=legend_image,
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


# --------------------------------------------------------------------------------------------
# The HTML page


@functools.cache
def leaflet_assets() -> tuple[str, str]:
    """Leaflet's JS and CSS from the installed xstatic-leaflet, CSS images inlined as data URIs."""
    import xstatic.pkg.leaflet as xleaflet

    data = Path(xleaflet.BASE_DIR)
    js = (data / "leaflet.js").read_text(encoding="utf-8")
    css = (data / "leaflet.css").read_text(encoding="utf-8")
    for image in ("layers-2x.png", "layers.png", "marker-icon.png"):
        path = data / "images" / image
        if path.is_file():
            uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
            css = css.replace(f"url(images/{image})", f"url({uri})")
    # An inlined script must not close its own <script> element early.
    return js.replace("</script", "<\\/script"), css


def _default_overlay(layers: list[MapLayer]) -> str | None:
    """Susceptibility classes if served, else susceptibility, else detection: the layer people open."""
    for wanted in ("class", "susceptib", "detect"):
        for layer in layers:
            if not layer.base and wanted in f"{layer.id} {layer.kind}".lower() and (
                wanted != "class" or "susceptib" in f"{layer.id} {layer.kind}".lower()
            ):
                return layer.id
    return None


def map_html(
    layers: list[MapLayer],
    server: str,
    versions: dict[str, str] | None = None,
    opacity: float = 0.7,
    height: int = MAP_HEIGHT_PX,
) -> str:
    """One self-contained HTML page with the map; its only URLs are the tile server's."""
    js, css = leaflet_assets()
    items = [asdict(layer) for layer in layers]
    if items and not any(layer.base for layer in layers):
        items[0]["base"] = True  # Leaflet needs a base layer; with no imagery take the first layer
    config = {
        "layers": items,
        "bounds": union_bounds(layers),
        "pointUrl": f"{server.rstrip('/')}/point",
        "pointParams": _model_params(versions),
        "opacity": opacity,
        "defaultOverlay": _default_overlay(layers),
        "classNames": list(CLASS_NAMES),
    }
    # json in a <script>: escape "</" so a title cannot end the element.
    config_js = json.dumps(config).replace("</", "<\\/")
    return (
        _TEMPLATE.replace("/*LEAFLET_CSS*/", css)
        .replace("/*LEAFLET_JS*/", js)
        .replace("/*CONFIG*/null", config_js)
        .replace("__HEIGHT__", str(height - 10))
        .replace("__LISTHEIGHT__", str(max(120, height - 200)))
    )


_TEMPLATE = """<!DOCTYPE html>
<html><head><meta charset="utf-8">
<style>/*LEAFLET_CSS*/</style>
<style>
  html, body { margin: 0; padding: 0; font: 13px/1.3 sans-serif; }
  #map { width: 100%; height: __HEIGHT__px; background: #dde3e8; }
  .sm-box { background: rgba(255,255,255,0.92); padding: 6px 8px; border-radius: 4px;
            box-shadow: 0 1px 4px rgba(0,0,0,0.35); }
  .sm-box h4 { margin: 0 0 4px 0; font-size: 13px; }
  .sm-swatch { display: inline-block; width: 14px; height: 12px; margin-right: 6px;
               vertical-align: middle; border: 1px solid #555; }
  .sm-status { font-size: 11px; color: #333; }
  .sm-status.sm-bad { color: #a00; font-weight: bold; }
  .sm-point td { padding: 0 6px 0 0; } .sm-point { max-height: 260px; overflow: auto; }
  .sm-legend { max-width: 220px; }
  .leaflet-control-layers-list { max-height: __LISTHEIGHT__px; overflow-y: auto; }
  button.sm-fit { cursor: pointer; padding: 3px 6px; }
</style></head>
<body>
<div id="map"></div>
<script>/*LEAFLET_JS*/</script>
<script>
(function () {
  const cfg = /*CONFIG*/null;
  const status = {loaded: 0, errors: 0, layers: {}};
  window.slidemapStatus = status;  // read by the browser test
  window.slidemapLayers = cfg.layers;
  const map = L.map('map', {zoomControl: true, preferCanvas: false});
  map.attributionControl.setPrefix('Leaflet (offline) | slidemap');
  const base = {}, overlays = {}, byId = {}, titles = {};
  let regionBounds = null;
  if (cfg.bounds) {
    const b = cfg.bounds;
    regionBounds = L.latLngBounds([[b[1], b[0]], [b[3], b[2]]]);
  }
  function label(l) {
    let t = l.title + (l.units ? ' (' + l.units + ')' : '');
    if (titles[t]) t += ' [' + l.id + ']';
    titles[t] = true;
    return t;
  }
  cfg.layers.forEach(function (l) {
    const opts = {minZoom: 0, maxZoom: 22, minNativeZoom: l.minzoom, maxNativeZoom: l.maxzoom,
                  opacity: l.base ? 1 : cfg.opacity, attribution: ''};
    if (l.bounds) opts.bounds = L.latLngBounds([[l.bounds[1], l.bounds[0]], [l.bounds[3], l.bounds[2]]]);
    const t = L.tileLayer(l.tiles, opts);
    t.on('tileload', function () { status.loaded += 1; status.layers[l.id] = (status.layers[l.id] || 0) + 1; updateStatus(); });
    t.on('tileerror', function () { status.errors += 1; updateStatus(); });
    t.slidemap = l;
    byId[l.id] = t;
    (l.base ? base : overlays)[label(l)] = t;
  });
  // imagery first; the DEM's hillshade where there is no imagery
  const firstBase = cfg.layers.find(function (l) { return l.base && l.kind !== 'basemap'; }) ||
                    cfg.layers.find(function (l) { return l.base; });
  if (firstBase) byId[firstBase.id].addTo(map);
  if (cfg.defaultOverlay && byId[cfg.defaultOverlay]) byId[cfg.defaultOverlay].addTo(map);
  if (regionBounds) map.fitBounds(regionBounds); else map.setView([0, 0], 2);

  // collapsed to its button (it opens on hover or tap), so the list never hides the map or a popup
  L.control.layers(base, overlays, {collapsed: true, position: 'topright'}).addTo(map);
  L.control.scale({imperial: false}).addTo(map);

  // Opacity of the overlays (the base imagery stays opaque underneath).
  const Opacity = L.Control.extend({
    onAdd: function () {
      const div = L.DomUtil.create('div', 'sm-box');
      div.innerHTML = '<label>Overlay opacity <input id="sm-opacity" type="range" min="0" max="100" value="' +
        Math.round(cfg.opacity * 100) + '"></label><br>' +
        '<button class="sm-fit" id="sm-fit" type="button">Fit to region</button> ' +
        '<span class="sm-status" id="sm-status">no tiles yet</span>';
      L.DomEvent.disableClickPropagation(div);
      L.DomEvent.disableScrollPropagation(div);
      div.querySelector('#sm-opacity').addEventListener('input', function (e) {
        const v = Number(e.target.value) / 100;
        Object.keys(overlays).forEach(function (k) { overlays[k].setOpacity(v); });
      });
      div.querySelector('#sm-fit').addEventListener('click', function () {
        if (regionBounds) map.fitBounds(regionBounds);
      });
      return div;
    }
  });
  new Opacity({position: 'bottomleft'}).addTo(map);

  function updateStatus() {
    const el = document.getElementById('sm-status');
    if (!el) return;
    el.textContent = status.loaded + ' tiles loaded' + (status.errors ? ', ' + status.errors + ' failed (is the tile server up?)' : '');
    el.className = 'sm-status' + (status.errors ? ' sm-bad' : '');
  }

  // Legend of the visible layers that have one (the five susceptibility classes among them).
  const Legend = L.Control.extend({
    onAdd: function () {
      this._div = L.DomUtil.create('div', 'sm-box sm-legend');
      L.DomEvent.disableClickPropagation(this._div);
      this.update();
      return this._div;
    },
    update: function () {
      if (!this._div) return;
      let html = '';
      cfg.layers.forEach(function (l) {
        if (!map.hasLayer(byId[l.id])) return;
        if (l.legend && l.legend.length) {
          html += '<h4>' + esc(l.title) + '</h4>';
          l.legend.forEach(function (e) {
            html += '<div><span class="sm-swatch" style="background:' + esc(e.color) + '"></span>' + esc(e.label) + '</div>';
          });
        } else if (l.legend_image) {
          html += '<h4>' + esc(l.title) + '</h4><img alt="legend" src="' + esc(l.legend_image) + '">';
        }
      });
      this._div.style.display = html ? '' : 'none';
      this._div.innerHTML = html;
    }
  });
  const legend = new Legend({position: 'bottomleft'});  // the layer list takes the right side
  legend.addTo(map);
  map.on('overlayadd overlayremove baselayerchange', function () { legend.update(); });

  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c];
    });
  }
  function rows(value, prefix, out) {
    if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
      Object.keys(value).forEach(function (k) { rows(value[k], prefix ? prefix + '.' + k : k, out); });
    } else {
      let text = value === null ? 'no data' : (typeof value === 'number' ? Number(value.toPrecision(6)) : JSON.stringify(value));
      if (typeof value === 'string') text = value;
      out.push([prefix || 'value', text]);
    }
    return out;
  }

  // Click: the server's /point values for that spot, asked from this page directly.
  let marker = null;
  map.on('click', function (e) {
    const lon = e.latlng.lng, lat = e.latlng.lat;
    const params = new URLSearchParams(Object.assign({lon: lon.toFixed(6), lat: lat.toFixed(6)}, cfg.pointParams));
    const url = cfg.pointUrl + '?' + params.toString();
    if (marker) map.removeLayer(marker);
    marker = L.circleMarker(e.latlng, {radius: 6, color: '#000', weight: 2, fillColor: '#fff', fillOpacity: 0.8}).addTo(map);
    const popup = L.popup({maxWidth: 360}).setLatLng(e.latlng)
      .setContent('<div class="sm-point">Asking the tile server for ' + lat.toFixed(5) + ', ' + lon.toFixed(5) + '...</div>').openOn(map);
    window.slidemapPoint = null;
    fetch(url).then(function (r) {
      return r.json().catch(function () { return {detail: r.status + ' ' + r.statusText}; })
        .then(function (j) { return {ok: r.ok, status: r.status, body: j}; });
    }).then(function (res) {
      window.slidemapPoint = res;
      let html = '<div class="sm-point"><b>' + lat.toFixed(5) + ', ' + lon.toFixed(5) + '</b>';
      if (!res.ok) {
        html += '<br>The tile server answered ' + res.status + ': ' + esc((res.body && (res.body.detail || res.body.message)) || '') + '</div>';
      } else {
        html += '<table>' + rows(res.body, '', []).map(function (r) {
          return '<tr><td>' + esc(r[0]) + '</td><td>' + esc(r[1]) + '</td></tr>';
        }).join('') + '</table></div>';
      }
      popup.setContent(html);
    }).catch(function (err) {
      // The server is down, or it sends no CORS header so this page may not read its answer.
      // An iframe may still show a cross-origin answer, so show the raw JSON there.
      window.slidemapPoint = {ok: false, error: String(err), fallback: 'iframe'};
      popup.setContent('<div class="sm-point"><b>' + lat.toFixed(5) + ', ' + lon.toFixed(5) + '</b><br>' +
        '<iframe class="sm-raw" title="point values" src="' + esc(url) + '" style="width:320px;height:200px;border:0"></iframe>' +
        '<br><small>Raw answer of the tile server (the page could not read it: ' + esc(err) +
        '; the server sends no CORS header or is down). The point form beside the map asks it from the dashboard.</small></div>');
    });
  });
})();
</script>
</body></html>
"""


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
            st.iframe(map_html(layers, server, versions), height=MAP_HEIGHT_PX)
        with evidence_col:
            evidence()
    else:
        st.iframe(map_html(layers, server, versions), height=MAP_HEIGHT_PX)
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
