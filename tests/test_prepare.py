"""`slidemap prepare` end to end on a small SYNTHETIC demo region, plus status and rebuilds."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio

from slidemap.cli import main
from slidemap.compute.terrain.factors import FACTOR_ORDER, load_normalisation, normalise
from slidemap.compute.region.prepare import LABEL_LANDSLIDE, LABEL_NODATA, prepare_region
from slidemap.compute.models.status import region_status


def _read(path, band=None):
    with rasterio.open(path) as src:
        return src.read(band) if band else src.read()


def test_factor_cog_contract(prepared_region):
    build = prepared_region / "build"
    with rasterio.open(build / "factors.tif") as src:
        assert src.descriptions == FACTOR_ORDER, "the demo region has all 14 factors, in order"
        assert src.crs.is_projected
        assert src.res == (30.0, 30.0)
        assert src.dtypes[0] == "float32"
        assert src.overviews(1), "COG with overviews"
        assert src.tags().get("SYNTHETIC") == "true"
        stack = src.read()
    names = list(src.descriptions)
    band = dict(zip(names, stack, strict=True))
    finite = np.isfinite(band["altitude"])
    assert finite.mean() > 0.99
    for name in names:
        assert np.isfinite(band[name][finite]).all(), f"NaN leaked into {name}"
    assert 0 <= np.nanmin(band["slope"]) and np.nanmax(band["slope"]) < 90
    aspect = band["aspect"][finite]
    assert ((aspect == -1) | ((aspect >= 0) & (aspect < 360))).all()
    assert np.nanmin(band["roughness"]) >= 1.0 - 1e-5
    assert 500 < np.nanmin(band["rainfall"]) and np.nanmax(band["rainfall"]) < 3000
    assert -1 <= np.nanmin(band["ndvi"]) and np.nanmax(band["ndvi"]) <= 1
    assert np.nanmin(band["distance_to_rivers"]) == 0
    for cat in ("landcover", "soil", "lithology"):
        values = band[cat][finite]
        assert np.array_equal(values, np.round(values)), f"{cat} must stay class codes"


def test_normalisation_json_and_native_sources(prepared_region):
    build = prepared_region / "build"
    data = json.loads((build / "factors.json").read_text())
    assert data["synthetic"] is True
    assert [f["name"] for f in data["factors"]] == list(FACTOR_ORDER)
    by_name = {f["name"]: f for f in data["factors"]}
    assert by_name["landcover"]["kind"] == "categorical" and by_name["landcover"]["classes"]
    assert by_name["slope"]["units"] == "degrees"
    for f in data["factors"]:
        assert (build / f["native"]).is_file(), f"native source of {f['name']}"
    with rasterio.open(build / by_name["rainfall"]["native"]) as src:
        assert src.res[0] >= 500, "rainfall keeps its coarse native grid"
    spec = load_normalisation(build)
    stack = _read(build / "factors.tif")
    normed = normalise(stack, spec)
    assert normed.dtype == np.float32
    assert normed.min() >= 0 and normed.max() <= 1
    assert np.isfinite(normed).all()


def test_ndvi_comes_from_the_pre_event_scene(prepared_region, region_copy):
    """With inputs.imagery_pre, NDVI is that scene's; without it, the post-event scene's, and
    factors.json says so (the reports repeat it)."""
    build = prepared_region / "build"
    meta = json.loads((build / "factors.json").read_text())
    by_name = {f["name"]: f for f in meta["factors"]}
    assert by_name["ndvi"]["source"] == "imagery_pre" and meta["imagery_factors_from"].startswith("imagery_pre")
    with rasterio.open(prepared_region / "s2_pre.tif") as src:
        pre = src.read().astype(np.float64) / 10000.0
    expected = (pre[3] - pre[2]) / (pre[3] + pre[2])
    native = _read(build / "native" / "ndvi.tif", 1)
    np.testing.assert_allclose(native, expected, atol=1e-5)
    # the same region without the pre-event scene: NDVI from the post-event one, with the warning
    toml = region_copy / "region.toml"
    toml.write_text("\n".join(ln for ln in toml.read_text().splitlines() if not ln.startswith("imagery_pre")))
    prepare_region(region_copy, show_progress=False)
    meta2 = json.loads((region_copy / "build" / "factors.json").read_text())
    assert "can carry the scars" in meta2["imagery_factors_from"]
    assert not np.allclose(_read(region_copy / "build" / "native" / "ndvi.tif", 1), native)


def test_imagery_and_labels(prepared_region):
    build = prepared_region / "build"
    with rasterio.open(build / "imagery.tif") as src:
        assert src.descriptions == ("B2", "B3", "B4", "B8")
        assert src.res == (10.0, 10.0)
        img = src.read()
    assert np.nanmax(img) <= 1.5, "imagery is reflectance (DN / scale)"
    labels = _read(build / "labels.tif", 1)
    labels_img = _read(build / "labels_imagery.tif", 1)
    assert labels.shape == _read(build / "factors.tif", 1).shape
    assert labels_img.shape == img.shape[1:]
    assert (labels == LABEL_LANDSLIDE).sum() > 10
    assert (labels_img == LABEL_LANDSLIDE).sum() > (labels == LABEL_LANDSLIDE).sum()
    assert set(np.unique(labels)) <= {0, 1, 2, LABEL_NODATA}


def test_planted_landslides_sit_where_the_factors_say(prepared_region):
    build = prepared_region / "build"
    with rasterio.open(build / "factors.tif") as src:
        slope = src.read(src.descriptions.index("slope") + 1)
    labels = _read(build / "labels.tif", 1)
    inside = slope[labels == LABEL_LANDSLIDE].mean()
    outside = slope[labels == 0].mean()
    assert inside > outside + 3, f"landslides should be on steeper ground: {inside:.1f} vs {outside:.1f} deg"
    # Scars are bare soil: NDVI lower inside landslides on the imagery grid.
    with rasterio.open(build / "imagery.tif") as src:
        red, nir = src.read(3), src.read(4)
    ndvi = (nir - red) / (nir + red)
    labels_img = _read(build / "labels_imagery.tif", 1)
    assert np.nanmean(ndvi[labels_img == 1]) < np.nanmean(ndvi[labels_img == 0]) - 0.1


def test_rerun_reuses_and_changed_dem_rebuilds(region_copy):
    first = prepare_region(region_copy, show_progress=False)
    assert first.built == [], "an unchanged region reuses every step"
    factors = region_copy / "build" / "factors.tif"
    before = factors.read_bytes()
    rain_part = (region_copy / "build" / "parts" / "rainfall.tif").stat().st_mtime_ns
    dem = region_copy / "dem.tif"
    with rasterio.open(dem, "r+") as src:
        data = src.read(1)
        data[: data.shape[0] // 2] += 50.0  # same bounds, new content
        src.write(data, 1)
    second = prepare_region(region_copy, show_progress=False)
    assert "terrain" in second.built and "stack" in second.built
    assert "rainfall" in second.reused, "inputs that did not change are not rebuilt"
    assert factors.read_bytes() != before
    assert (region_copy / "build" / "parts" / "rainfall.tif").stat().st_mtime_ns == rain_part


def test_touch_without_change_is_not_a_rebuild(region_copy):
    (region_copy / "dem.tif").touch()
    assert prepare_region(region_copy, show_progress=False).built == []


def test_other_crs_and_resolution_are_reprojected(demo_region_source, tmp_path):
    """Inputs in another CRS and an analysis grid coarser than the DEM."""
    region = tmp_path / "region"
    shutil.copytree(demo_region_source, region)
    rain = region / "rain_mm_yr.tif"
    from rasterio.warp import calculate_default_transform, reproject

    with rasterio.open(rain) as src:
        transform, width, height = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height, *src.bounds)
        profile = src.profile | {"crs": "EPSG:4326", "transform": transform, "width": width, "height": height}
        data = src.read(1)
        out = np.zeros((height, width), dtype=data.dtype)
        reproject(data, out, src_transform=src.transform, src_crs=src.crs, dst_transform=transform, dst_crs="EPSG:4326")
    rain.unlink()
    with rasterio.open(rain, "w", **profile) as dst:
        dst.write(out, 1)
    toml = (region / "region.toml").read_text().replace("resolution = 30", "resolution = 60")
    (region / "region.toml").write_text(toml)
    result = prepare_region(region, show_progress=False)
    assert result.grid.res == (60.0, 60.0)
    with rasterio.open(region / "build" / "factors.tif") as src:
        assert src.res == (60.0, 60.0)
        assert src.crs.to_epsg() != 4326
        rainfall = src.read(src.descriptions.index("rainfall") + 1)
        aspect = src.read(src.descriptions.index("aspect") + 1)
    assert np.isfinite(rainfall).mean() > 0.99
    assert 500 < np.nanmean(rainfall) < 3000
    finite = aspect[np.isfinite(aspect)]
    assert ((finite == -1) | ((finite >= 0) & (finite < 360))).all()


def test_dem_only_region_gives_terrain_factors(demo_region_source, tmp_path):
    region = tmp_path / "r"
    region.mkdir()
    shutil.copy(demo_region_source / "dem.tif", region / "dem.tif")
    (region / "region.toml").write_text('[region]\nname = "dem-only"\nresolution = "dem"\n\n[inputs]\ndem = "dem.tif"\n')
    result = prepare_region(region, show_progress=False)
    assert result.factor_names == ["altitude", "slope", "aspect", "plan_curvature", "profile_curvature", "roughness", "twi"]
    assert not (region / "build" / "labels.tif").exists()


def test_status_json_contract(prepared_region, capsys):
    assert main(["status", str(prepared_region), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    for key in ("name", "synthetic", "grid", "factors", "factor_names", "imagery", "labels", "models", "reports", "caches"):
        assert key in status
    assert status["synthetic"] is True
    assert set(status["grid"]) >= {"crs", "resolution", "shape", "bounds"}
    assert status["factors"].startswith("/") and status["factors"].endswith("factors.tif")
    assert status["factor_names"] == list(FACTOR_ORDER)
    assert isinstance(status["models"], list) and isinstance(status["reports"], list)
    assert region_status(prepared_region).built is True


def test_status_of_unprepared_region(demo_region_source, capsys):
    assert main(["status", str(demo_region_source)]) == 0
    assert "not prepared" in capsys.readouterr().out


@pytest.mark.parametrize("cmd", [[], ["prepare"], ["status"], ["demo-region"], ["train"], ["map"]])
def test_help_for_every_command(cmd, capsys):
    with pytest.raises(SystemExit) as info:
        main([*cmd, "--help"])
    assert info.value.code == 0
    assert "usage: slidemap" in capsys.readouterr().out
