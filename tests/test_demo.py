"""The SYNTHETIC demo-region generator: files, determinism, and the planted truth."""

from __future__ import annotations

import csv
import hashlib
import json
import tomllib
from pathlib import Path

import numpy as np
from scipy import ndimage
import pytest

import geopandas as gpd  # required dependencies: imported, never skipped
import pyogrio
import rasterio

from rasterio.features import rasterize  # noqa: E402

from slidemap.compute.demo.region import DEMO_FILES, generate_demo_region, is_demo_region  # noqa: E402
from slidemap.errors import RegionError  # noqa: E402

RASTERS = ("dem.tif", "rain_mm_yr.tif", "s2.tif", "s2_pre.tif", "lc.tif", "soil.tif", "lithology.tif")
VECTORS = ("rivers.gpkg", "roads.gpkg", "settlements.gpkg", "water.gpkg", "landslides.gpkg")
CRS = "EPSG:32649"


def _hashes(region: Path) -> dict[str, str]:
    return {n: hashlib.sha256((region / n).read_bytes()).hexdigest() for n in RASTERS + ("truth.json",)}


@pytest.fixture(scope="module")
def region3(demo_region_source) -> Path:
    """conftest's session-wide 3 km region, seed 0 (read-only here)."""
    return demo_region_source


@pytest.fixture(scope="module")
def region5(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "r5"
    generate_demo_region(out, size_km=5, seed=3)
    return out


@pytest.fixture(scope="module", params=["region3", "region5"])
def region(request) -> Path:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def truth(region) -> dict:
    return json.loads((region / "truth.json").read_text())


def _slope_deg(dem: np.ndarray, res: float) -> np.ndarray:
    gy, gx = np.gradient(dem.astype(np.float64), res)
    return np.degrees(np.arctan(np.hypot(gx, gy)))


# --------------------------------------------------------------------------- files


def test_all_files_present(region):
    for name in DEMO_FILES:
        assert (region / name).is_file(), name
    # no temp folders or sidecars left behind
    assert not list(region.parent.glob(f".{region.name}.demo-*"))
    assert not list(region.glob("*.aux.xml"))


def test_region_toml(region):
    data = tomllib.loads((region / "region.toml").read_text())
    assert data["region"]["synthetic"] is True
    assert data["region"]["resolution"] == 30
    assert data["region"]["crs"] == CRS
    inputs = data["inputs"]
    assert inputs["dem"] == "dem.tif"
    assert inputs["rainfall"] == "rain_mm_yr.tif"
    assert inputs["imagery"] == {"path": "s2.tif", "bands": ["B2", "B3", "B4", "B8"], "scale": 10000}
    assert inputs["imagery_pre"] == {"path": "s2_pre.tif", "bands": ["B2", "B3", "B4", "B8"], "scale": 10000}
    for key, stem in (("landcover", "lc"), ("soil", "soil"), ("lithology", "lithology")):
        assert inputs[key] == {"path": f"{stem}.tif", "classes": f"{stem}_classes.csv"}
    for key in ("roads", "rivers", "settlements", "water"):
        assert inputs[key] == f"{key}.gpkg"
    assert inputs["inventory"] == {"path": "landslides.gpkg"}
    for value in inputs.values():
        path = value if isinstance(value, str) else value["path"]
        assert (region / path).is_file()


def test_rasters_grid_dtype_and_bands(region, truth):
    n = truth["grid"]["dem"]["width"]
    expect = {
        "dem.tif": ("float32", 1, 30.0, n),
        "rain_mm_yr.tif": ("float32", 1, 1000.0, truth["grid"]["rainfall"]["width"]),
        "s2.tif": ("uint16", 4, 10.0, 3 * n),
        "s2_pre.tif": ("uint16", 4, 10.0, 3 * n),
        "lc.tif": ("uint8", 1, 30.0, n),
        "soil.tif": ("uint8", 1, 30.0, n),
        "lithology.tif": ("uint8", 1, 30.0, n),
    }
    for name, (dtype, count, res, width) in expect.items():
        with rasterio.open(region / name) as ds:
            assert ds.crs.to_string() == CRS, name
            assert ds.dtypes == (dtype,) * count, name
            assert ds.res == (res, res), name
            assert ds.width == width and ds.height == width, name
            assert ds.nodata is not None, name
            assert ds.profile.get("tiled") and ds.profile.get("compress", "").lower() == "deflate", name
            bounds = ds.bounds
        assert bounds.left == 430_000.0 and bounds.top == 3_245_000.0
    with rasterio.open(region / "s2.tif") as ds:
        assert ds.descriptions == ("B2", "B3", "B4", "B8")
        assert ds.nodata == 0
        img = ds.read()
    assert img.min() >= 1  # no accidental nodata inside the region
    with rasterio.open(region / "dem.tif") as ds:
        dem = ds.read(1)
    assert np.isfinite(dem).all() and (dem != -9999).all()
    with rasterio.open(region / "rain_mm_yr.tif") as ds:
        rain = ds.read(1)
    assert rain.min() >= 1000 and rain.max() <= 2000


def test_class_rasters_match_their_tables(region):
    for stem, n_min in (("lc", 6), ("soil", 10), ("lithology", 5)):
        with open(region / f"{stem}_classes.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert list(rows[0].keys()) == ["code", "name"]
        codes = {int(r["code"]) for r in rows}
        assert len(codes) >= n_min
        with rasterio.open(region / f"{stem}.tif") as ds:
            values = set(np.unique(ds.read(1)).tolist())
        assert values <= codes, (stem, values - codes)
    names = [r["name"] for r in csv.DictReader(open(region / "lc_classes.csv"))]
    assert names == ["cropland", "forest", "grassland", "wetland", "water", "artificial"]


def test_vectors_readable_in_region_crs(region, truth):
    for name in VECTORS:
        gdf = gpd.read_file(region / name)
        assert gdf.crs.to_string() == CRS, name
        assert len(gdf) > 0, name
        assert gdf.geometry.is_valid.all(), name
    assert set(gpd.read_file(region / "rivers.gpkg").geom_type) <= {"LineString", "MultiLineString"}
    assert set(gpd.read_file(region / "roads.gpkg").geom_type) <= {"LineString", "MultiLineString"}
    assert set(gpd.read_file(region / "settlements.gpkg").geom_type) <= {"Polygon", "MultiPolygon"}


# --------------------------------------------------------------------------- markers


def test_synthetic_markers_everywhere(region):
    for name in RASTERS:
        with rasterio.open(region / name) as ds:
            tags = ds.tags()
        assert tags.get("SYNTHETIC") == "true", name
        assert "SYNTHETIC" in tags.get("TIFFTAG_IMAGEDESCRIPTION", ""), name
    for name in VECTORS:
        assert pyogrio.read_info(region / name)["layer_metadata"]["SYNTHETIC"] == "true", name
    assert (region / "README.txt").read_text().startswith("SYNTHETIC")
    assert "SYNTHETIC" in (region / "region.toml").read_text()
    assert json.loads((region / "truth.json").read_text())["synthetic"] is True
    assert is_demo_region(region)


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_differs(region3, tmp_path):
    again = tmp_path / "again"
    generate_demo_region(again, size_km=3, seed=0)
    assert _hashes(again) == _hashes(region3)
    other = tmp_path / "other"
    generate_demo_region(other, size_km=3, seed=1)
    h0, h1 = _hashes(region3), _hashes(other)
    for name in RASTERS:
        assert h0[name] != h1[name], name


# --------------------------------------------------------------------------- the world


def test_relief_and_rainfall_follow_altitude(region, truth):
    with rasterio.open(region / "dem.tif") as ds:
        dem = ds.read(1)
        dem_tr = ds.transform
    relief = float(dem.max() - dem.min())
    assert 150.0 < relief < 2500.0
    assert truth["terrain"]["relief_m"] == pytest.approx(relief, abs=0.1)
    slope = _slope_deg(dem, 30.0)
    assert 12.0 < slope.mean() < 30.0
    # rainfall rises with altitude: compare 1 km rain to the DEM averaged on its grid
    with rasterio.open(region / "rain_mm_yr.tif") as ds:
        rain = ds.read(1)
        rain_tr = ds.transform
    from rasterio.warp import Resampling, reproject

    elev = np.full(rain.shape, np.nan, dtype=np.float32)
    reproject(dem, elev, src_transform=dem_tr, src_crs=CRS, dst_transform=rain_tr, dst_crs=CRS,
              dst_nodata=np.nan, resampling=Resampling.average)
    ok = np.isfinite(elev)
    if ok.sum() >= 9:
        assert np.corrcoef(elev[ok], rain[ok])[0, 1] > 0.3


def test_rivers_follow_low_ground(region):
    with rasterio.open(region / "dem.tif") as ds:
        dem = ds.read(1)
        tr = ds.transform
    rivers = gpd.read_file(region / "rivers.gpkg")
    mask = rasterize(((g, 1) for g in rivers.geometry), out_shape=dem.shape, transform=tr).astype(bool)
    assert mask.any()
    assert dem[mask].mean() < dem.mean()
    # rivers run downhill: along each long segment the end is lower than the start
    xs = []
    for g in rivers.geometry:
        if g.length > 500:
            (x0, y0), (x1, y1) = g.coords[0], g.coords[-1]
            xs.append((x0, y0, x1, y1))
    drops = []
    for x0, y0, x1, y1 in xs:
        r0, c0 = rasterio.transform.rowcol(tr, x0, y0)
        r1, c1 = rasterio.transform.rowcol(tr, x1, y1)
        drops.append(dem[r0, c0] - dem[r1, c1])
    assert (np.asarray(drops) >= -0.01).all()


def test_landslides_inventory_and_truth(region, truth):
    inv = gpd.read_file(region / "landslides.gpkg")
    assert inv["label"].dtype == bool
    slides = inv[inv["label"]]
    negs = inv[~inv["label"]]
    assert set(slides.geom_type) <= {"Polygon", "MultiPolygon"}
    assert set(negs.geom_type) == {"Point"}
    assert len(slides) == truth["counts"]["landslides"] == len(truth["landslides"])
    assert len(slides) >= 30
    assert len(negs) == truth["counts"]["negatives"] >= 30
    with rasterio.open(region / "dem.tif") as ds:
        area = (ds.bounds.right - ds.bounds.left) * (ds.bounds.top - ds.bounds.bottom)
    share = slides.area.sum() / area
    assert 0.005 <= share <= 0.035
    assert share == pytest.approx(truth["landslide_area_share"], rel=1e-3)
    # sizes: tens to a few hundred metres, elongated
    lengths = np.asarray([s["length_m"] for s in truth["landslides"]])
    assert lengths.min() >= 20 and lengths.max() <= 600
    # the physical rule: heads are (mostly) unstable
    fs = np.asarray([s["fs"] for s in truth["landslides"]])
    assert np.median(fs) < 1.0
    assert truth["rule"]["soil_depth_m"] > 0
    # negatives do not fall inside landslides
    assert not negs.geometry.within(slides.union_all()).any()


def test_landslides_on_steeper_ground_and_in_hollows(region, truth):
    from slidemap.compute.demo.world import _hollow_depth

    with rasterio.open(region / "dem.tif") as ds:
        dem = ds.read(1)
        tr = ds.transform
    slope = _slope_deg(dem, 30.0)
    slides = gpd.read_file(region / "landslides.gpkg")
    slides = slides[slides["label"]]
    mask = rasterize(((g, 1) for g in slides.geometry), out_shape=dem.shape, transform=tr).astype(bool)
    inside, outside = slope[mask].mean(), slope[~mask].mean()
    assert inside > outside + 1.5
    # the hillslope-scale term: on steep ground, landslides are more frequent in hollows (cells below
    # their 300 m surroundings) than on noses and ridges
    hollow = _hollow_depth(dem)
    steep = slope > 15.0
    lo, hi = np.quantile(hollow[steep], [1 / 3, 2 / 3])
    in_hollows = mask[steep & (hollow >= hi)].mean()
    on_noses = mask[steep & (hollow <= lo)].mean()
    assert in_hollows > 1.5 * on_noses
    assert "300 m" in truth["rule"]["context_term"] and "Landslide rule" in (region / "README.txt").read_text()
    assert truth["mean_slope_deg_inside_landslides"] == pytest.approx(inside, abs=0.01)
    assert truth["mean_slope_deg_outside_landslides"] == pytest.approx(outside, abs=0.01)


def test_scars_are_bright_bare_soil(region):
    with rasterio.open(region / "s2.tif") as ds:
        img = ds.read().astype(np.float64) / 10000.0
        tr = ds.transform
    slides = gpd.read_file(region / "landslides.gpkg")
    slides = slides[slides["label"]]
    mask = rasterize(((g, 1) for g in slides.geometry), out_shape=img.shape[1:], transform=tr).astype(bool)
    b4, b8 = img[2], img[3]
    ndvi = (b8 - b4) / (b8 + b4)
    assert b4[mask].mean() > 1.8 * b4[~mask].mean()
    assert ndvi[mask].mean() < ndvi[~mask].mean() - 0.2
    # not trivial: plenty of bare-soil-like pixels outside landslides too
    assert ((ndvi < 0.35) & ~mask).sum() > 0.5 * ((ndvi < 0.35) & mask).sum()
    # water is dark in NIR
    water = gpd.read_file(region / "water.gpkg")
    if len(water):
        wmask = rasterize(((g, 1) for g in water.geometry), out_shape=b8.shape, transform=tr).astype(bool)
        if wmask.sum() > 20:
            assert b8[wmask].mean() < 0.5 * b8[~wmask].mean()


def test_pre_event_scene_has_no_scars(region):
    """Same land surface, no scars: NDVI inside the landslides is what it is around them."""
    with rasterio.open(region / "s2_pre.tif") as ds:
        pre = ds.read().astype(np.float64) / 10000.0
        tr = ds.transform
    with rasterio.open(region / "s2.tif") as ds:
        post = ds.read().astype(np.float64) / 10000.0
    slides = gpd.read_file(region / "landslides.gpkg")
    slides = slides[slides["label"]]
    mask = rasterize(((g, 1) for g in slides.geometry), out_shape=pre.shape[1:], transform=tr).astype(bool)
    ndvi_pre = (pre[3] - pre[2]) / (pre[3] + pre[2])
    ndvi_post = (post[3] - post[2]) / (post[3] + post[2])
    ring = ndimage.binary_dilation(mask, iterations=6) & ~ndimage.binary_dilation(mask, iterations=2)
    assert abs(ndvi_pre[mask].mean() - ndvi_pre[ring].mean()) < 0.08  # no scar before the event
    assert ndvi_post[mask].mean() < ndvi_post[ring].mean() - 0.15  # the scar after it
    assert np.corrcoef(ndvi_pre[~mask].ravel(), ndvi_post[~mask].ravel())[0, 1] > 0.8  # one land surface
    assert not np.array_equal(pre[:, ~mask], post[:, ~mask])  # but another date (season, noise)


def test_points_csv(region, truth):
    with open(region / "landslide_points.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0].keys()) == ["x", "y", "label"]
    labels = [int(r["label"]) for r in rows]
    assert labels.count(1) == truth["counts"]["landslides"]
    assert labels.count(0) == truth["counts"]["negatives"]
    with rasterio.open(region / "dem.tif") as ds:
        b = ds.bounds
    xs = np.asarray([float(r["x"]) for r in rows])
    ys = np.asarray([float(r["y"]) for r in rows])
    assert ((xs > b.left) & (xs < b.right) & (ys > b.bottom) & (ys < b.top)).all()


# --------------------------------------------------------------------------- out dir handling


def test_refuses_foreign_non_empty_dir(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(RegionError, match="not empty"):
        generate_demo_region(target, size_km=2, seed=0)
    assert (target / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_regenerates_over_previous_demo_and_empty_dir(tmp_path):
    target = tmp_path / "r"
    target.mkdir()  # empty folder is fine
    assert generate_demo_region(target, size_km=2, seed=0) == target / "region.toml"
    first = _hashes(target)
    (target / "build").mkdir()
    (target / "build" / "x.txt").write_text("built")
    generate_demo_region(target, size_km=2, seed=5)
    assert _hashes(target)["dem.tif"] != first["dem.tif"]
    assert (target / "build" / "x.txt").read_text() == "built"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


@pytest.mark.parametrize("size", [0.5, 1000.0, float("nan")])
def test_bad_size_is_a_region_error(tmp_path, size):
    with pytest.raises(RegionError):
        generate_demo_region(tmp_path / "x", size_km=size)
    assert not (tmp_path / "x").exists()
