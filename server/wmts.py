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

from slidemap.server.layers import Layer, LayerRegistry
from slidemap.server.tiles import get_tms, wgs84_bounds, zoom_range


def encode_query(params: Sequence[tuple[str, str]]) -> str:
    """Query string with every reserved character (commas included) percent-encoded."""
    return urlencode(list(params), safe="")


def capabilities(
    registry: LayerRegistry,
    entries: Sequence[tuple[Layer, Sequence[tuple[str, str]]]],
    base_url: str,
    tms: morecantile.TileMatrixSet,
    fmt: str = "png",
) -> str:
    """Capabilities for ``entries`` = (layer, query parameters its tile URLs carry)."""
    mime = {"png": "image/png", "webp": "image/webp"}[fmt]
    layer_xml = []
    zooms: list[tuple[int, int]] = []
    catalog = registry.refresh()
    for layer, query in entries:
        qs = encode_query(query)
        w, s, e, n = wgs84_bounds(registry.grid_of(layer, catalog))
        minzoom, maxzoom = zoom_range(registry, layer, tms, catalog)
        zooms.append((minzoom, maxzoom))
        limits_xml = _limits_xml(tms.id, (w, s, e, n), minzoom, maxzoom)
        template = f"{base_url}/layers/{layer.id}/tiles/{tms.id}/{{TileMatrix}}/{{TileCol}}/{{TileRow}}.{fmt}"
        if qs:
            template += "?" + qs
        abstract = layer.description + (" SYNTHETIC data." if catalog.synthetic else "")
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
      <Format>{mime}</Format>
      <TileMatrixSetLink>
        <TileMatrixSet>{tms.id}</TileMatrixSet>
        <TileMatrixSetLimits>{limits_xml}</TileMatrixSetLimits>
      </TileMatrixSetLink>
      <ResourceURL format="{mime}" resourceType="tile" template={quoteattr(template)}/>
    </Layer>"""
        )
    minzoom = min((z[0] for z in zooms), default=tms.minzoom)
    maxzoom = max((z[1] for z in zooms), default=tms.maxzoom)
    matrices = _matrices_xml(tms.id, minzoom, maxzoom)
    crs = tms.crs.srs if hasattr(tms.crs, "srs") else str(tms.crs)
    epsg = tms.rasterio_crs.to_epsg()
    supported = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else escape(crs)
    title = f"slidemap {registry.label}"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Capabilities xmlns="http://www.opengis.net/wmts/1.0" xmlns:ows="http://www.opengis.net/ows/1.1"
  xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:gml="http://www.opengis.net/gml" version="1.0.0">
  <ows:ServiceIdentification>
    <ows:Title>{escape(title)}</ows:Title>
    <ows:ServiceType>OGC WMTS</ows:ServiceType>
    <ows:ServiceTypeVersion>1.0.0</ows:ServiceTypeVersion>
  </ows:ServiceIdentification>
  <Contents>{''.join(layer_xml)}
    <TileMatrixSet>
      <ows:Identifier>{tms.id}</ows:Identifier>
      <ows:SupportedCRS>{supported}</ows:SupportedCRS>
      {matrices}
    </TileMatrixSet>
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
