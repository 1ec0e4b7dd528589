"""OGC WMTS 1.0.0 capabilities (RESTful) for GDAL's WMTS driver, QGIS and other desktop clients.

GDAL's ``WMTS:<url>`` connection string splits on commas, so no URL inside the document (nor
the capabilities URL we advertise) may carry a raw comma: query values are percent-encoded
(``rescale=0%2C1``) and ``&`` is XML-escaped by the template (``templates/wmts.xml``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlencode

import jinja2
import morecantile
from titiler.core.utils import tms_limits, tms_to_xml

from slidemap.compute import provenance
from slidemap.server.errors import NotFound
from slidemap.server.layers import Layer, LayerRegistry
from slidemap.server.tiles import get_tms, wgs84_bounds, zoom_range


def encode_query(params: Sequence[tuple[str, str]]) -> str:
    """Query string with every reserved character (commas included) percent-encoded."""
    return urlencode(list(params), safe="")


TEMPLATES = Path(__file__).parent / "templates"


@functools.cache
def _template() -> jinja2.Template:
    """The capabilities document (``templates/wmts.xml``, as titiler renders its own); every value
    XML-escaped, the tile matrices (titiler's ``tms_to_xml``) inserted as they are."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             keep_trailing_newline=True)
    return env.get_template("wmts.xml")


def capabilities(
    registry: LayerRegistry,
    entries: Sequence[tuple[Layer, Sequence[tuple[str, str]]]],
    base_url: str,
    tms: morecantile.TileMatrixSet | Sequence[morecantile.TileMatrixSet],
    fmt: str = "png",
) -> str:
    """Capabilities for ``entries`` = (layer, query parameters its tile URLs carry), in one tile
    matrix set or several (each layer links every set that covers it; the first is the default
    GDAL and QGIS pick)."""
    mime = {"png": "image/png", "webp": "image/webp"}[fmt]
    sets = [tms] if isinstance(tms, morecantile.TileMatrixSet) else list(tms)
    layers = []
    zooms: dict[str, list[tuple[int, int]]] = {t.id: [] for t in sets}
    catalog = registry.refresh()
    refused: NotFound | None = None
    for layer, query in entries:
        qs = encode_query(query)
        w, s, e, n = wgs84_bounds(registry.grid_of(layer, catalog))
        links = []
        for t in sets:
            try:
                minzoom, maxzoom = zoom_range(registry, layer, t, catalog)
                limits = _limits(t.id, (w, s, e, n), minzoom, maxzoom)
            except NotFound as exc:  # a set that does not hold the region (tiles.check_holds) is left out
                refused = exc
                continue
            except Exception:  # noqa: BLE001 - so is one whose limits cannot be computed
                continue
            zooms[t.id].append((minzoom, maxzoom))
            links.append({"tms": t.id, "limits": limits})
        if not links:
            continue
        template = f"{base_url}/layers/{layer.id}/tiles/{{TileMatrixSet}}/{{TileMatrix}}/{{TileCol}}/{{TileRow}}.{fmt}"
        if qs:
            template += "?" + qs
        layers.append({"title": layer.title, "abstract": layer.description + provenance.sentence(catalog.synthetic),
                       "bounds": (w, s, e, n), "id": layer.id, "links": links, "template": template})
    if entries and not layers and refused is not None:
        raise refused  # asked for sets that hold none of the layers: 404 naming those that do
    set_entries = []
    for t in sets:
        if entries and not zooms[t.id]:
            continue  # no layer in this set
        minzoom = min((z[0] for z in zooms[t.id]), default=t.minzoom)
        maxzoom = max((z[1] for z in zooms[t.id]), default=t.maxzoom)
        crs = t.crs.srs if hasattr(t.crs, "srs") else str(t.crs)
        epsg = t.rasterio_crs.to_epsg()
        set_entries.append({"id": t.id, "supported": f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else crs,
                            "matrices": _matrices_xml(t.id, minzoom, maxzoom)})
    return _template().render(title=f"slidemap {registry.label}", layers=layers, sets=set_entries, mime=mime,
                              base_url=base_url)


@functools.lru_cache(maxsize=256)
def _limits(tms_id: str, bounds: tuple[float, float, float, float], minzoom: int, maxzoom: int) -> tuple[dict, ...]:
    """TileMatrixLimits of a layer (computed once per bounds and zoom range: it costs milliseconds)."""
    tms = get_tms(tms_id)
    return tuple(tms_limits(tms, bounds, zooms=(minzoom, maxzoom), geographic_crs=tms.rasterio_geographic_crs))


@functools.lru_cache(maxsize=64)
def _matrices_xml(tms_id: str, minzoom: int, maxzoom: int) -> tuple[str, ...]:
    return tuple(tms_to_xml(get_tms(tms_id), minzoom, maxzoom))
