"""OGC WMTS 1.0.0 capabilities (RESTful) for GDAL's WMTS driver, QGIS and other desktop clients.

GDAL's ``WMTS:<url>`` connection string splits on commas, so no URL inside the document (nor
the capabilities URL we advertise) may carry a raw comma: query values are percent-encoded
(``rescale=0%2C1``) and ``&`` is XML-escaped in templates.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from urllib.parse import urlencode
from xml.sax.saxutils import escape, quoteattr

import morecantile
from titiler.core.utils import tms_limits, tms_to_xml

from slidemap.compute import provenance
from slidemap.server.layers import Layer, LayerRegistry
from slidemap.server.tiles import get_tms, wgs84_bounds, zoom_range


def encode_query(params: Sequence[tuple[str, str]]) -> str:
    """Query string with every reserved character (commas included) percent-encoded."""
    return urlencode(list(params), safe="")


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
    layer_xml = []
    zooms: dict[str, list[tuple[int, int]]] = {t.id: [] for t in sets}
    catalog = registry.refresh()
    for layer, query in entries:
        qs = encode_query(query)
        w, s, e, n = wgs84_bounds(registry.grid_of(layer, catalog))
        links = []
        for t in sets:
            try:
                minzoom, maxzoom = zoom_range(registry, layer, t, catalog)
                limits_xml = _limits_xml(t.id, (w, s, e, n), minzoom, maxzoom)
            except Exception:  # noqa: BLE001 - a set whose area does not hold the region is left out
                continue
            zooms[t.id].append((minzoom, maxzoom))
            links.append(f"""
      <TileMatrixSetLink>
        <TileMatrixSet>{t.id}</TileMatrixSet>
        <TileMatrixSetLimits>{limits_xml}</TileMatrixSetLimits>
      </TileMatrixSetLink>""")
        if not links:
            continue
        template = f"{base_url}/layers/{layer.id}/tiles/{{TileMatrixSet}}/{{TileMatrix}}/{{TileCol}}/{{TileRow}}.{fmt}"
        if qs:
            template += "?" + qs
        abstract = layer.description + provenance.sentence(catalog.synthetic)
        layer_xml.append(
            f"""
    <Layer>
      <ows:Title>{escape(layer.title)}</ows:Title>
      <ows:Abstract>{escape(abstract)}</ows:Abstract>
      <ows:WGS84BoundingBox crs="urn:ogc:def:crs:OGC:2:84">
        <ows:LowerCorner>{w} {s}</ows:LowerCorner>
        <ows:UpperCorner>{e} {n}</ows:UpperCorner>
      </ows:WGS84BoundingBox>
      <ows:Identifier>{escape(layer.id)}</ows:Identifier>
      <Style isDefault="true"><ows:Identifier>default</ows:Identifier></Style>
      <Format>{mime}</Format>{''.join(links)}
      <ResourceURL format="{mime}" resourceType="tile" template={quoteattr(template)}/>
    </Layer>"""
        )
    set_xml = []
    for t in sets:
        if entries and not zooms[t.id]:
            continue  # no layer in this set
        minzoom = min((z[0] for z in zooms[t.id]), default=t.minzoom)
        maxzoom = max((z[1] for z in zooms[t.id]), default=t.maxzoom)
        crs = t.crs.srs if hasattr(t.crs, "srs") else str(t.crs)
        epsg = t.rasterio_crs.to_epsg()
        supported = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else escape(crs)
        set_xml.append(f"""
    <TileMatrixSet>
      <ows:Identifier>{t.id}</ows:Identifier>
      <ows:SupportedCRS>{supported}</ows:SupportedCRS>
      {_matrices_xml(t.id, minzoom, maxzoom)}
    </TileMatrixSet>""")
    title = f"slidemap {registry.label}"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Capabilities xmlns="http://www.opengis.net/wmts/1.0" xmlns:ows="http://www.opengis.net/ows/1.1"
  xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:gml="http://www.opengis.net/gml" version="1.0.0">
  <ows:ServiceIdentification>
    <ows:Title>{escape(title)}</ows:Title>
    <ows:ServiceType>OGC WMTS</ows:ServiceType>
    <ows:ServiceTypeVersion>1.0.0</ows:ServiceTypeVersion>
  </ows:ServiceIdentification>
  <Contents>{''.join(layer_xml)}{''.join(set_xml)}
  </Contents>
  <ServiceMetadataURL xlink:href={quoteattr(base_url + '/WMTSCapabilities.xml')}/>
</Capabilities>
"""


@functools.lru_cache(maxsize=256)
def _limits_xml(tms_id: str, bounds: tuple[float, float, float, float], minzoom: int, maxzoom: int) -> str:
    """TileMatrixLimits of a layer (computed once per bounds and zoom range: it costs milliseconds)."""
    tms = get_tms(tms_id)
    limits = tms_limits(tms, bounds, zooms=(minzoom, maxzoom), geographic_crs=tms.rasterio_geographic_crs)
    return "".join(
        f"<TileMatrixLimits><TileMatrix>{lim['tileMatrix']}</TileMatrix>"
        f"<MinTileRow>{lim['minTileRow']}</MinTileRow><MaxTileRow>{lim['maxTileRow']}</MaxTileRow>"
        f"<MinTileCol>{lim['minTileCol']}</MinTileCol><MaxTileCol>{lim['maxTileCol']}</MaxTileCol>"
        "</TileMatrixLimits>"
        for lim in limits
    )


@functools.lru_cache(maxsize=64)
def _matrices_xml(tms_id: str, minzoom: int, maxzoom: int) -> str:
    return "".join(tms_to_xml(get_tms(tms_id), minzoom, maxzoom))
