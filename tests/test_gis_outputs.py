"""Outputs a GIS opens ready: colour tables and class names in class rasters, QGIS/SLD styles beside
maps, inventories as typed GeoPackage layers with their styles, and what prepare says it loaded."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import xml.etree.ElementTree as ET

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import Point, box

from slidemap.compute.maps.classes import CLASS_COLOURS, CLASS_NAMES, class_table
from slidemap.compute.region.grid import Grid
from slidemap.compute.region.inventory_layers import LAYERS, latest_detected, read_inventory, write_inventory
from slidemap.compute.region.raster_io import write_cog
from slidemap.compute.region.styles import Stop, colormap_stops, write_category_names, write_raster_styles

UTM = "EPSG:32633"


def _grid(n: int = 64) -> Grid:
    return Grid(rasterio.crs.CRS.from_string(UTM), from_origin(500000, 4000000, 30, 30), n, n)


@pytest.mark.skipif(shutil.which("gdalinfo") is None, reason="gdalinfo not installed (apt-get install gdal-bin)")
def test_gdal_reads_the_class_raster_colour_table_and_names(tmp_path):
    tif = tmp_path / "classes.tif"
    data = (np.arange(64 * 64).reshape(64, 64) % 6).astype(np.uint8)
    table = class_table()
    write_cog(tif, data, _grid(), nodata=0, overview_resampling="mode",
              colormap={0: (0, 0, 0, 0), **{v: (*rgb, 255) for v, (_, rgb) in table.items()}})
    write_category_names(tif, {0: "no data", **{v: name for v, (name, _) in table.items()}})
    info = json.loads(subprocess.run(["gdalinfo", "-json", str(tif)], capture_output=True, text=True, check=True).stdout)
    band = info["bands"][0]
    assert band["categories"] == ["no data", *CLASS_NAMES]
    entries = band["colorTable"]["entries"]
    assert [tuple(entries[i][:3]) for i in range(1, 6)] == list(CLASS_COLOURS)
    assert entries[0][3] == 0  # no data is transparent
    with rasterio.open(tif) as src:  # still a valid COG with its data
        np.testing.assert_array_equal(src.read(1), data)


def test_a_class_raster_with_overviews_is_written_without_gdal_warnings(tmp_path, caplog):
    """The main job printed GDAL's "overviews on palette index raster bands without a palette" once per
    overview level: the table now goes on after the overviews are built."""
    tif = tmp_path / "classes.tif"
    data = (np.arange(300 * 300).reshape(300, 300) // 7 % 6).astype(np.uint8)
    with caplog.at_level("WARNING"):
        write_cog(tif, data, _grid(300), nodata=0, overview_resampling="mode",
                  colormap={0: (0, 0, 0, 0), 1: (26, 150, 65, 255), 2: (215, 25, 28, 255)})
    assert not [r for r in caplog.records if "palette" in r.getMessage()], caplog.text
    with rasterio.open(tif) as src:
        assert src.colorinterp[0] == rasterio.enums.ColorInterp.palette
        assert src.colormap(1)[2] == (215, 25, 28, 255)
        assert src.overviews(1) == [2, 4, 8, 16]
        assert set(np.unique(src.read(1, out_shape=(75, 75)))) <= set(range(6))  # class codes, not averages
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def test_qml_and_sld_are_wellformed_and_say_the_classes(tmp_path):
    tif = tmp_path / "map.tif"
    tif.write_bytes(b"")
    qml, sld = write_raster_styles(tif, [Stop(v, rgb, n) for v, (n, rgb) in class_table().items()], classes=True)
    entries = ET.parse(qml).getroot().findall(".//paletteEntry")
    assert [e.get("label") for e in entries] == list(CLASS_NAMES)
    assert entries[-1].get("color") == "#d73027"
    ns = {"sld": "http://www.opengis.net/sld"}
    cmap = ET.parse(sld).getroot().find(".//sld:ColorMap", ns)
    assert cmap.get("type") == "values" and len(cmap) == 5
    qml2, _ = write_raster_styles(tmp_path / "p.tif", colormap_stops("rdylgn_r", units="probability"), classes=False)
    items = ET.parse(qml2).getroot().findall(".//colorrampshader/item")
    assert [float(i.get("value")) for i in items] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_inventory_layers_by_geometry_with_styles(tmp_path):
    frame = gpd.GeoDataFrame(
        {"label": [True, False, True], "source": ["a.gpkg", "pts.csv", "pts.csv"]},
        geometry=[box(0, 0, 50, 50), Point(100, 100), Point(200, 200)], crs=UTM,
    )
    gpkg = tmp_path / "inventory.gpkg"
    counts = write_inventory(gpkg, frame)
    assert counts == {LAYERS["polygon"]: 1, LAYERS["point"]: 2}
    types = {name: kind for name, kind in pyogrio.list_layers(gpkg)}
    assert types[LAYERS["polygon"]] == "Polygon" and types[LAYERS["point"]] == "Point"
    with sqlite3.connect(gpkg) as conn:
        styled = dict(conn.execute("SELECT f_table_name, useAsDefault FROM layer_styles").fetchall())
    assert set(styled) == {LAYERS["polygon"], LAYERS["point"]}
    back = read_inventory(gpkg)
    assert len(back) == 3 and sorted(back["label"].tolist()) == [False, True, True]
    assert gpkg.with_suffix(".qml").is_file()
    # written to a temporary file first (as every output is): the sidecars take the published name
    tmp = tmp_path / ".inventory.gpkg.tmp123.gpkg"
    write_inventory(tmp, frame, published_as=tmp_path / "final.gpkg")
    assert (tmp_path / "final.qml").is_file() and (tmp_path / "final.sld").is_file()
    assert not list(tmp_path.glob(".*.qml")) and not list(tmp_path.glob(".*.sld"))


def test_latest_detected_inventory_is_the_newest_run(tmp_path):
    runs = tmp_path / "reports" / "inventory"
    for run in ("20261201-000000-aaaaaa", "20261203-000000-bbbbbb"):
        (runs / run).mkdir(parents=True)
        (runs / run / "landslides_detected.gpkg").write_bytes(b"x")
    (runs / "20261203-000000-bbbbbb" / "other.gpkg").write_bytes(b"x")
    assert latest_detected(tmp_path).parent.name == "20261203-000000-bbbbbb"
    assert latest_detected(tmp_path / "nowhere") is None


def test_class_names_with_markup_characters_stay_wellformed(tmp_path):
    """Class names come from a region's CSV: '&' or '<' must not break the .aux.xml."""
    aux = write_category_names(tmp_path / "x.tif", {0: "no data", 1: "rock & <soil>"})
    names = [c.text for c in ET.parse(aux).getroot().iter("Category")]
    assert names == ["no data", "rock & <soil>"]
