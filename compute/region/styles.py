"""Styles beside every map slidemap writes, so QGIS (and any SLD client) opens them ready.

* rasters: ``<name>.qml`` (QGIS) and ``<name>.sld`` (OGC SLD 1.0) beside the GeoTIFF -- a paletted
  renderer with the class names for class rasters, a colour ramp for probabilities; class GeoTIFFs
  also carry the colour table inside and their category names in GDAL's ``.aux.xml``;
* GeoPackages: the same QML/SLD in the GeoPackage's ``layer_styles`` table (which QGIS applies when
  it opens a layer) and as ``<name>.qml`` beside it for the first layer.

Colours are given once by the callers (the class table of :mod:`slidemap.compute.maps.classes`, the
detection ramp), so styles, tiles and legends agree.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from slidemap.compute.region.raster_io import write_bytes_atomic

QGIS_VERSION = "3.28.0"
# the colour ramps the server renders probability layers with (rio-tiler names), and the styles use
SUSCEPTIBILITY_COLORMAP = "rdylgn_r"
DETECTION_COLORMAP = "magma"
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Stop:
    value: float
    colour: RGB
    label: str


def _hex(c: RGB) -> str:
    return "#%02x%02x%02x" % tuple(int(v) for v in c)


def _qgis(body: str) -> str:
    return (f"<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
            f'<qgis version="{QGIS_VERSION}" styleCategories="Symbology">\n{body}</qgis>\n')


def classes_qml(classes: Sequence[Stop]) -> str:
    entries = "".join(f'        <paletteEntry value="{int(s.value)}" label={quoteattr(s.label)} color="{_hex(s.colour)}" alpha="255"/>\n'
                      for s in classes)
    return _qgis('  <pipe>\n    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1">\n'
                 f"      <colorPalette>\n{entries}      </colorPalette>\n    </rasterrenderer>\n  </pipe>\n")


def ramp_qml(stops: Sequence[Stop]) -> str:
    lo, hi = stops[0].value, stops[-1].value
    items = "".join(f'          <item value="{s.value:g}" label={quoteattr(s.label)} color="{_hex(s.colour)}" alpha="255"/>\n'
                    for s in stops)
    return _qgis(
        f'  <pipe>\n    <rasterrenderer type="singlebandpseudocolor" band="1" opacity="1" alphaBand="-1" '
        f'classificationMin="{lo:g}" classificationMax="{hi:g}">\n      <rastershader>\n'
        f'        <colorrampshader colorRampType="INTERPOLATED" classificationMode="1" clip="0" '
        f'minimumValue="{lo:g}" maximumValue="{hi:g}">\n{items}        </colorrampshader>\n'
        "      </rastershader>\n    </rasterrenderer>\n  </pipe>\n")


def _sld(name: str, symbolizer: str) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<StyledLayerDescriptor version="1.0.0" xmlns="http://www.opengis.net/sld" '
            'xmlns:ogc="http://www.opengis.net/ogc" xmlns:xlink="http://www.w3.org/1999/xlink" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
            f"  <NamedLayer><Name>{escape(name)}</Name><UserStyle><Title>{escape(name)}</Title><FeatureTypeStyle><Rule>\n"
            f"{symbolizer}  </Rule></FeatureTypeStyle></UserStyle></NamedLayer>\n</StyledLayerDescriptor>\n")


def raster_sld(name: str, stops: Sequence[Stop], kind: str) -> str:
    entries = "".join(f'      <ColorMapEntry color="{_hex(s.colour)}" quantity="{s.value:g}" label={quoteattr(s.label)}/>\n'
                      for s in stops)
    return _sld(name, f'    <RasterSymbolizer><Opacity>1</Opacity><ColorMap type="{kind}">\n{entries}'
                      "    </ColorMap></RasterSymbolizer>\n")


def colormap_stops(name: str, lo: float = 0.0, hi: float = 1.0, n: int = 5, units: str = "") -> list[Stop]:
    """``n`` stops of a rio-tiler colormap (the one the server renders the layer with) over [lo, hi]."""
    from rio_tiler.colormap import cmap

    table = cmap.get(name)
    out = []
    for i in range(n):
        value = lo + (hi - lo) * i / (n - 1)
        colour = table[int(round(255 * i / (n - 1)))][:3]
        out.append(Stop(value, colour, f"{value:g}{' ' + units if units else ''}"))
    return out


def write_raster_styles(tif: Path, stops: Sequence[Stop], classes: bool) -> list[Path]:
    """``.qml`` and ``.sld`` beside ``tif``: a paletted style (``classes``) or a colour ramp."""
    tif = Path(tif)
    qml, sld = tif.with_suffix(".qml"), tif.with_suffix(".sld")
    write_bytes_atomic(qml, (classes_qml(stops) if classes else ramp_qml(stops)).encode())
    write_bytes_atomic(sld, raster_sld(tif.stem, stops, "values" if classes else "ramp").encode())
    return [qml, sld]


def write_category_names(tif: Path, names: dict[int, str]) -> Path:
    """GDAL's category names for band 1 (``<tif>.aux.xml``; GeoTIFF has no place for them inside):
    QGIS and ``gdalinfo`` show "very high", not 5."""
    top = max(names)
    cats = "".join(f"      <Category>{escape(names.get(i, ''))}</Category>\n" for i in range(top + 1))
    xml = f'<PAMDataset>\n  <PAMRasterBand band="1">\n    <CategoryNames>\n{cats}    </CategoryNames>\n  </PAMRasterBand>\n</PAMDataset>\n'
    aux = Path(f"{tif}.aux.xml")
    write_bytes_atomic(aux, xml.encode())
    return aux


# ---- vectors -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VectorClass:
    value: str | None  # the attribute value ("1"/"0" for booleans); None: every feature (one symbol)
    label: str
    colour: RGB


def _symbol(index: int, geometry: str, colour: RGB) -> str:
    rgb = ",".join(str(int(v)) for v in colour)
    if geometry == "point":
        opts = {"name": "circle", "color": f"{rgb},230", "outline_color": "35,35,35,255", "size": "2.6"}
        cls, kind = "SimpleMarker", "marker"
    else:
        opts = {"color": f"{rgb},80", "outline_color": f"{rgb},255", "outline_width": "0.6", "style": "solid"}
        cls, kind = "SimpleFill", "fill"
    options = "".join(f'          <Option name="{k}" type="QString" value="{v}"/>\n' for k, v in opts.items())
    return (f'      <symbol type="{kind}" name="{index}" alpha="1" clip_to_extent="1" force_rhr="0">\n'
            f'        <layer class="{cls}" enabled="1" locked="0" pass="0">\n          <Option type="Map">\n'
            f"{options}          </Option>\n        </layer>\n      </symbol>\n")


def vector_qml(attribute: str, classes: Sequence[VectorClass], geometry: str) -> str:
    if len(classes) == 1 and classes[0].value is None:
        return _qgis('  <renderer-v2 type="singleSymbol" symbollevels="0" forceraster="0" enableorderby="0">\n'
                     f"    <symbols>\n{_symbol(0, geometry, classes[0].colour)}    </symbols>\n  </renderer-v2>\n")
    cats = "".join(f'      <category value={quoteattr(c.value)} label={quoteattr(c.label)} symbol="{i}" render="true"/>\n'
                   for i, c in enumerate(classes))
    symbols = "".join(_symbol(i, geometry, c.colour) for i, c in enumerate(classes))
    return _qgis(f'  <renderer-v2 type="categorizedSymbol" attr="{attribute}" symbollevels="0" forceraster="0" enableorderby="0">\n'
                 f"    <categories>\n{cats}    </categories>\n    <symbols>\n{symbols}    </symbols>\n  </renderer-v2>\n")


def vector_sld(name: str, attribute: str, classes: Sequence[VectorClass], geometry: str) -> str:
    rules = []
    for c in classes:
        fill = _hex(c.colour)
        sym = (f"<PointSymbolizer><Graphic><Mark><WellKnownName>circle</WellKnownName><Fill><CssParameter name=\"fill\">{fill}</CssParameter></Fill>"
               f"</Mark><Size>7</Size></Graphic></PointSymbolizer>" if geometry == "point" else
               f"<PolygonSymbolizer><Fill><CssParameter name=\"fill\">{fill}</CssParameter><CssParameter name=\"fill-opacity\">0.3</CssParameter></Fill>"
               f"<Stroke><CssParameter name=\"stroke\">{fill}</CssParameter></Stroke></PolygonSymbolizer>")
        where = ("" if c.value is None else
                 f"<ogc:Filter><ogc:PropertyIsEqualTo><ogc:PropertyName>{attribute}</ogc:PropertyName>"
                 f"<ogc:Literal>{c.value}</ogc:Literal></ogc:PropertyIsEqualTo></ogc:Filter>")
        rules.append(f"    <Name>{escape(c.label)}</Name>{where}{sym}\n")
    return _sld(name, "  </Rule><Rule>\n".join(rules))


def write_gpkg_styles(gpkg: Path, layers: dict[str, tuple[str, Sequence[VectorClass], str]],
                      published_as: Path | None = None) -> Path | None:
    """Store each layer's style in ``gpkg``'s ``layer_styles`` table (as QGIS does; it applies the
    default style when it opens the layer) and write the first layer's ``.qml``/``.sld`` beside the
    published file (``published_as``: the final name when ``gpkg`` is a temporary file about to be
    renamed onto it). ``layers``: ``{layer: (attribute, classes, "point"|"polygon")}``."""
    gpkg = Path(gpkg)
    if not layers:
        return None
    with sqlite3.connect(gpkg) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS layer_styles (id INTEGER PRIMARY KEY AUTOINCREMENT, f_table_catalog TEXT(256), "
            "f_table_schema TEXT(256), f_table_name TEXT(256), f_geometry_column TEXT(256), styleName TEXT(30), "
            "styleQML TEXT, styleSLD TEXT, useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30), "
            "update_time DATETIME DEFAULT CURRENT_TIMESTAMP)")
        for layer, (attribute, classes, geometry) in layers.items():
            row = conn.execute("SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)).fetchone()
            conn.execute("DELETE FROM layer_styles WHERE f_table_name = ?", (layer,))
            conn.execute(
                "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, styleName, "
                "styleQML, styleSLD, useAsDefault, description, owner, ui) VALUES ('', '', ?, ?, ?, ?, ?, 1, ?, '', '')",
                (layer, row[0] if row else "geom", layer, vector_qml(attribute, classes, geometry),
                 vector_sld(layer, attribute, classes, geometry), "slidemap"))
    first, (attribute, classes, geometry) = next(iter(layers.items()))
    final = Path(published_as or gpkg)
    qml = final.with_suffix(".qml")
    write_bytes_atomic(qml, vector_qml(attribute, classes, geometry).encode())
    write_bytes_atomic(final.with_suffix(".sld"), vector_sld(first, attribute, classes, geometry).encode())
    return qml
