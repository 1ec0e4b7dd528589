"""Region inputs the tile-server issue found (issue 11): paths outside the region folder, empty
inventories, all-nodata rasters, truncated messages, unknown keys. Each is one line naming the file
and the fix, exit code 2, and nothing written (not even an empty build folder)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from affine import Affine
from shapely.geometry import Point, box

from slidemap.cli import main
from slidemap.compute.region.manifest import load_region

UTM = "EPSG:32649"


def _raster(path: Path, data: np.ndarray | None = None, nodata: float | None = None, size: int = 40) -> Path:
    if data is None:
        data = (np.random.default_rng(0).random((size, size)) * 1000).astype("float32")
    profile = {"driver": "GTiff", "width": data.shape[1], "height": data.shape[0], "count": 1, "dtype": str(data.dtype),
               "crs": UTM, "transform": Affine(30.0, 0, 500000.0, 0, -30.0, 3200000.0), "nodata": nodata}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


def _region(root: Path, inputs: str, region: str = 'name = "t"\nresolution = 30') -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "region.toml").write_text(f"[region]\n{region}\n\n[inputs]\n{inputs}\n")
    return root


def _fails(capsys, region_dir: Path, *needles: str) -> str:
    before = sorted(p.name for p in region_dir.iterdir())
    code = main(["prepare", str(region_dir), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("slidemap: error:") and "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    assert sorted(p.name for p in region_dir.iterdir()) == before, "nothing may be written"
    return err


def test_paths_outside_the_region_are_refused_unless_allowed(tmp_path, capsys):
    outside = _raster(tmp_path / "elsewhere.tif")
    region = tmp_path / "region"
    for path in ("../elsewhere.tif", str(outside)):
        _region(region, f'dem = "{path}"')
        _fails(capsys, region, "inputs.dem", "outside the region folder", "allow_outside = true")
    # Through a link inside the folder: the resolved target counts.
    (region / "link.tif").symlink_to(outside)
    _region(region, 'dem = "link.tif"')
    _fails(capsys, region, "inputs.dem", "outside the region folder")
    # The classes table of a categorical input too, and before any file is opened.
    _raster(region / "dem.tif")
    _region(region, 'dem = "dem.tif"\nlandcover = { path = "dem.tif", classes = "../../etc/passwd" }')
    _fails(capsys, region, "inputs.landcover.classes", "outside the region folder")
    # Opted in: loads.
    _region(region, 'dem = "../elsewhere.tif"', 'name = "t"\nresolution = 30\nallow_outside = true')
    assert load_region(region).inputs.dem.path == "../elsewhere.tif"


def test_every_unknown_key_is_named_at_once(tmp_path, capsys):
    _raster(tmp_path / "dem.tif")
    _region(tmp_path, 'dem = "dem.tif"\nrainfal = "x.tif"\nlandcovr = "y.tif"', 'name = "t"\nresoluton = 30')
    err = _fails(capsys, tmp_path, "[region.resoluton]", "[inputs.rainfal]", "[inputs.landcovr]", "unknown keys")
    assert err.count("unknown key") == 1  # one sentence, every key


def test_header_only_csv_inventory_is_refused(tmp_path, capsys):
    _raster(tmp_path / "dem.tif")
    (tmp_path / "pts.csv").write_text("x,y,label\n")
    _region(tmp_path, 'dem = "dem.tif"\ninventory = { path = "pts.csv", label = "label" }')
    _fails(capsys, tmp_path, "pts.csv", "inputs.inventory", "no rows (only a header)", "add the landslides")


def test_inventory_geopackage_without_features_is_refused(tmp_path, capsys):
    _raster(tmp_path / "dem.tif")
    gpd.GeoDataFrame({"label": []}, geometry=[], crs=UTM).to_file(tmp_path / "inv.gpkg", layer="landslides")
    _region(tmp_path, 'dem = "dem.tif"\ninventory = { path = "inv.gpkg" }')
    _fails(capsys, tmp_path, "inv.gpkg", "inputs.inventory", "no features")


def test_empty_geopackage_message_is_whole(tmp_path, capsys):
    _raster(tmp_path / "dem.tif")
    (tmp_path / "roads.gpkg").write_bytes(b"")
    _region(tmp_path, 'dem = "dem.tif"\nroads = "roads.gpkg"')
    err = _fails(capsys, tmp_path, "roads.gpkg", "inputs.roads", "empty file (0 bytes)")
    assert err.endswith("GeoJSON)")
    # A file that is not a vector at all: the reason without the path again, cut at a word.
    (tmp_path / "roads.gpkg").write_bytes(b"this is not a geopackage " * 20)
    err = _fails(capsys, tmp_path, "roads.gpkg", "inputs.roads", "not a readable vector file")
    assert err.count(str(tmp_path / "roads.gpkg")) == 1


def test_all_nodata_rasters_are_refused_and_nothing_is_written(tmp_path, capsys):
    _raster(tmp_path / "dem.tif", np.full((40, 40), -9999, dtype="float32"), nodata=-9999)
    _region(tmp_path, 'dem = "dem.tif"')
    _fails(capsys, tmp_path, "dem.tif", "inputs.dem", "no valid cells", "nodata")
    assert not (tmp_path / "build").exists()
    _raster(tmp_path / "dem.tif", np.full((40, 40), np.nan, dtype="float32"))
    _fails(capsys, tmp_path, "dem.tif", "no valid cells")
    _raster(tmp_path / "dem.tif")
    _raster(tmp_path / "rain.tif", np.zeros((40, 40), dtype="float32"), nodata=0)
    _region(tmp_path, 'dem = "dem.tif"\nrainfall = "rain.tif"')
    _fails(capsys, tmp_path, "rain.tif", "inputs.rainfall", "no valid cells")


def test_a_valid_region_with_points_still_prepares(tmp_path):
    _raster(tmp_path / "dem.tif")
    gpd.GeoDataFrame({"label": [True, False]}, geometry=[Point(500300, 3199700), Point(500600, 3199400)],
                     crs=UTM).to_file(tmp_path / "inv.gpkg", layer="landslides")
    _region(tmp_path, 'dem = "dem.tif"\ninventory = { path = "inv.gpkg" }')
    assert main(["prepare", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / "build" / "factors.tif").is_file()


def test_prepare_says_what_it_loaded_and_dropped(tmp_path, capsys):
    _raster(tmp_path / "dem.tif")  # 40 x 40 cells of 30 m from (500000, 3200000)
    (tmp_path / "pts.csv").write_text("x,y,label\n500100,3199900,1\n500300,3199500,0\n490000,3199500,1\n")
    gpd.GeoDataFrame({"label": [True]}, geometry=[box(500600, 3199000, 500700, 3199100)], crs=UTM).to_file(
        tmp_path / "polys.gpkg", layer="slides")
    _region(tmp_path, 'dem = "dem.tif"\ninventory = [{ path = "pts.csv", label = "label" }, { path = "polys.gpkg" }]')
    assert main(["prepare", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "pts.csv: 3 features read, 2 kept (1 landslides, 1 non-landslides); dropped: 1 outside the region" in out
    assert "polys.gpkg: 1 features read, 1 kept (1 landslides, 0 non-landslides); dropped: none" in out
    assert "inventory_polygons 1, inventory_points 2" in out
    styles = sorted(p.name for p in (tmp_path / "build").iterdir() if p.suffix in (".qml", ".sld"))
    assert styles == ["inventory.qml", "inventory.sld"]  # named after the published GeoPackage

