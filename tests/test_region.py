"""Region manifest validation: every user mistake is one line naming the file and the fix,
exit code 2, no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from slidemap.cli import main
from slidemap.compute.region.manifest import load_region, parse_label
from slidemap.errors import RegionError

UTM = "EPSG:32649"


def _raster(path: Path, crs: str | None = UTM, count: int = 1, size: int = 40, origin=(500000.0, 3200000.0),
            res: float = 30.0, descriptions: list[str] | None = None, dtype: str = "float32") -> Path:
    rng = np.random.default_rng(0)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": count, "dtype": dtype,
               "transform": Affine(res, 0, origin[0], 0, -res, origin[1])}
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write((rng.random((count, size, size)) * 1000).astype(dtype))
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
    return path


def _region(tmp_path: Path, inputs: str, region: str = 'name = "t"\nresolution = 30') -> Path:
    (tmp_path / "region.toml").write_text(f"[region]\n{region}\n\n[inputs]\n{inputs}\n")
    return tmp_path


def _fails(capsys, region_dir: Path, *needles: str) -> str:
    before = sorted(p.name for p in region_dir.iterdir())
    code = main(["prepare", str(region_dir), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    assert sorted(p.name for p in region_dir.iterdir()) == before, "nothing may be written"
    return err


def test_valid_minimal_region_loads(tmp_path):
    _raster(tmp_path / "dem.tif")
    region = load_region(_region(tmp_path, 'dem = "dem.tif"'))
    assert region.analysis_crs.to_epsg() == 32649
    assert region.inputs.inventory == []


def test_missing_file(tmp_path, capsys):
    _raster(tmp_path / "dem.tif")
    _region(tmp_path, 'dem = "dem.tif"\nrainfall = "rain.tif"')
    _fails(capsys, tmp_path, "rain.tif", "inputs.rainfall", "not found", "fix the path")


def test_missing_manifest(tmp_path, capsys):
    assert main(["prepare", str(tmp_path)]) == 2
    assert "region.toml" in capsys.readouterr().err


def test_bad_toml_and_unknown_key(tmp_path, capsys):
    (tmp_path / "region.toml").write_text("[region\nname=")
    _fails(capsys, tmp_path, "region.toml", "not valid TOML")
    _raster(tmp_path / "dem.tif")
    _region(tmp_path, 'dem = "dem.tif"\nrainfal = "x.tif"')
    _fails(capsys, tmp_path, "region.toml", "inputs.rainfal", "unknown key")


def test_raster_without_crs(tmp_path, capsys):
    _raster(tmp_path / "dem.tif", crs=None)
    _region(tmp_path, 'dem = "dem.tif"')
    _fails(capsys, tmp_path, "dem.tif", "no CRS")


def test_band_list_does_not_match(tmp_path, capsys):
    _raster(tmp_path / "dem.tif")
    _raster(tmp_path / "s2.tif", count=3, dtype="uint16", res=10, size=100)
    _region(tmp_path, 'dem = "dem.tif"\nimagery = { path = "s2.tif", bands = ["B2", "B3", "B4", "B8"] }')
    _fails(capsys, tmp_path, "s2.tif", "4 bands", "has 3")


def test_band_order_against_descriptions(tmp_path, capsys):
    _raster(tmp_path / "dem.tif")
    _raster(tmp_path / "s2.tif", count=2, dtype="uint16", res=10, size=100, descriptions=["B4", "B8"])
    _region(tmp_path, 'dem = "dem.tif"\nimagery = { path = "s2.tif", bands = ["B8", "B4"] }')
    _fails(capsys, tmp_path, "s2.tif", "order")


def test_geographic_analysis_crs(tmp_path, capsys):
    _raster(tmp_path / "dem.tif")
    _region(tmp_path, 'dem = "dem.tif"', region='name = "t"\nresolution = 30\ncrs = "EPSG:4326"')
    _fails(capsys, tmp_path, "geographic", "projected")


def test_geographic_dem_needs_metric_resolution(tmp_path, capsys):
    _raster(tmp_path / "dem.tif", crs="EPSG:4326", origin=(91.8, 22.5), res=0.0003)
    _region(tmp_path, 'dem = "dem.tif"', region='name = "t"\nresolution = "dem"')
    _fails(capsys, tmp_path, "geographic")


def test_input_not_overlapping_dem(tmp_path, capsys):
    _raster(tmp_path / "dem.tif")
    _raster(tmp_path / "rain.tif", origin=(700000.0, 3200000.0), res=1000, size=5)
    _region(tmp_path, 'dem = "dem.tif"\nrainfall = "rain.tif"')
    _fails(capsys, tmp_path, "rain.tif", "does not overlap the DEM")


def test_truncated_file(tmp_path, capsys):
    path = _raster(tmp_path / "dem.tif", size=300)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _region(tmp_path, 'dem = "dem.tif"')
    _fails(capsys, tmp_path, "dem.tif", "unreadable or truncated")


def test_not_a_raster(tmp_path, capsys):
    (tmp_path / "dem.tif").write_text("this is not a GeoTIFF")
    _region(tmp_path, 'dem = "dem.tif"')
    _fails(capsys, tmp_path, "dem.tif", "unreadable")


def test_csv_inventory_column_missing(tmp_path, capsys):
    _raster(tmp_path / "dem.tif")
    (tmp_path / "pts.csv").write_text("east,north\n500100,3199900\n")
    _region(tmp_path, 'dem = "dem.tif"\ninventory = { path = "pts.csv", x = "x", y = "north" }')
    _fails(capsys, tmp_path, "pts.csv", "no column 'x'")


def test_vector_not_readable(tmp_path, capsys):
    _raster(tmp_path / "dem.tif")
    (tmp_path / "roads.gpkg").write_bytes(b"\x00garbage")
    _region(tmp_path, 'dem = "dem.tif"\nroads = "roads.gpkg"')
    _fails(capsys, tmp_path, "roads.gpkg", "not a readable vector")


@pytest.mark.parametrize(
    ("crs", "needle"),
    [("+proj=utm +zone=49 +datum=WGS84 +units=ft +type=crs", "not metres"), ("EPSG:3857", "Mercator")],
)
def test_non_metric_or_mercator_analysis_crs(tmp_path, capsys, crs, needle):
    _raster(tmp_path / "dem.tif")
    _region(tmp_path, 'dem = "dem.tif"', region=f'name = "t"\nresolution = 30\ncrs = "{crs}"')
    _fails(capsys, tmp_path, needle)


def test_csv_points_outside_the_dem(tmp_path, capsys):
    _raster(tmp_path / "dem.tif")
    (tmp_path / "pts.csv").write_text("x,y,lab\n900100,3199900,1\n900200,3199800,0\n")
    _region(tmp_path, 'dem = "dem.tif"\ninventory = { path = "pts.csv", label = "lab" }')
    _fails(capsys, tmp_path, "pts.csv", "does not overlap the DEM")


def test_csv_points_with_text_coordinates(tmp_path, capsys):
    _raster(tmp_path / "dem.tif")
    (tmp_path / "pts.csv").write_text("x,y\n500100,3199900\nabc,3199800\n")
    _region(tmp_path, 'dem = "dem.tif"\ninventory = { path = "pts.csv" }')
    _fails(capsys, tmp_path, "pts.csv", "row 3", "not a number")


def test_blank_or_unknown_label_is_refused_before_anything_is_built(tmp_path, capsys):
    _raster(tmp_path / "dem.tif")
    (tmp_path / "pts.csv").write_text("x,y,lab\n500100,3199900,1\n500200,3199800,\n")
    _region(tmp_path, 'dem = "dem.tif"\ninventory = { path = "pts.csv", label = "lab" }')
    _fails(capsys, tmp_path, "pts.csv", "'lab'", "true/false")
    (tmp_path / "pts.csv").write_text("x,y,lab\n500100,3199900,1\n500200,3199800,2\n")
    _fails(capsys, tmp_path, "pts.csv", "'lab'")


def test_south_up_dem_gives_a_north_up_grid(tmp_path):
    from slidemap.compute.region.prepare import prepare_region

    rng = np.random.default_rng(1)
    data = np.cumsum(rng.random((40, 50)), axis=0).astype("float32") * 10
    profile = {"driver": "GTiff", "width": 50, "height": 40, "count": 1, "dtype": "float32", "crs": UTM,
               "transform": Affine(30, 0, 500000.0, 0, 30, 3200000.0)}  # row 0 is the south edge
    with rasterio.open(tmp_path / "dem.tif", "w", **profile) as dst:
        dst.write(data, 1)
    _region(tmp_path, 'dem = "dem.tif"')
    result = prepare_region(tmp_path, show_progress=False)
    assert result.grid.shape == (40, 50)
    assert result.grid.transform.e < 0
    with rasterio.open(tmp_path / "build" / "factors.tif") as src:
        altitude = src.read(1)
    # North-up: the highest ground (the south-up file's last row) is now at the top, cell for cell.
    assert result.grid.transform == Affine(30, 0, 500000.0, 0, -30, 3200000.0 + 40 * 30)
    np.testing.assert_allclose(altitude, np.flipud(data), rtol=1e-6)


@pytest.mark.parametrize(("value", "expected"), [("TRUE", True), ("false", False), (1, True), ("0", False), (True, True), (0.0, False)])
def test_parse_label(value, expected):
    assert parse_label(value) is expected


@pytest.mark.parametrize("value", ["maybe", float("nan"), 2, "", None])
def test_parse_label_rejects_garbage(value):
    with pytest.raises(ValueError):
        parse_label(value)


def test_region_error_is_one_line(tmp_path):
    with pytest.raises(RegionError) as info:
        load_region(tmp_path / "nowhere")
    assert "\n" not in str(info.value)


def test_console_script_error_is_one_line_exit_2(tmp_path):
    """The installed `slidemap` entry point, as a user runs it."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("slidemap", path=str(Path(sys.executable).parent))
    assert exe is not None, "the slidemap console script is not installed next to this Python (pip install -e .)"
    _raster(tmp_path / "dem.tif", crs=None)
    _region(tmp_path, 'dem = "dem.tif"')
    proc = subprocess.run([exe, "prepare", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no CRS" in proc.stderr
    assert not (tmp_path / "build").exists()
